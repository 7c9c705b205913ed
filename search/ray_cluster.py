"""The Ray a search runs on: start an embedded local one, or join a running cluster, and describe it.

Local by default: `ray_session(None)` starts an embedded single-node Ray on 127.0.0.1 with its
dashboard, and shuts it down at the end; `ray_session("host:port")` joins a running cluster
(`check_ray_address` first tells the CLI, in one line, when nothing answers there). The `RayInfo`
it yields gives the per-trial resources (`trial_resources`) and the dashboard line to print
(`dashboard_hint`). Nothing here knows about Tune; `search.tune` runs the trials on this Ray.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray

# Ray reads this once, when `ray` is imported: "0" keeps a local Ray on the loopback address.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayAddressError(ValueError):
    """A `--ray-address` that is malformed or that nothing answers on; one line."""


class ResourceError(ValueError):
    """The cluster lacks what a trial asks for (e.g. --gpus-per-trial on a cluster without GPUs); one line."""


@dataclass(frozen=True)
class RayInfo:
    """The Ray the search runs on: its address, dashboard URL and resources."""

    address: str
    dashboard_url: str | None
    local: bool
    cpus: float
    gpus: float
    token_auth: bool


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """Raise RayAddressError unless `address` (the cluster's GCS, host:port) accepts a TCP connection.

    Ray Client addresses (ray://) are refused: Tune would run this driver's loop, MLflow logging
    included, on the cluster; run polarsearch on a node of the cluster instead.
    """
    if "://" in address:
        raise RayAddressError(f"Ray address {address!r}: give the cluster's GCS as host:port (e.g. 10.0.0.5:6379) "
                              "and run polarsearch on a node of the cluster; ray:// (Ray Client) is not supported")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayAddressError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise RayAddressError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}") from None


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[RayInfo]:
    """Ray for the duration of a search: an embedded local one (address None) or a running cluster.

    The embedded Ray listens on 127.0.0.1 only, with the dashboard on; it is shut down at the end.
    Joining a cluster leaves it running (only this driver disconnects).
    """
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process")
    local = address is None
    with _local_only(local):
        if local:
            context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                               logging_level="warning", configure_logging=True)
        else:
            context = ray.init(address=address, logging_level="warning")
        try:
            resources = ray.cluster_resources()
            url = context.dashboard_url
            yield RayInfo(
                address=context.address_info.get("gcs_address", address or ""),
                dashboard_url=f"http://{url}" if url and not url.startswith("http") else url,
                local=local,
                cpus=float(resources.get("CPU", 0)),
                gpus=float(resources.get("GPU", 0)),
                token_auth=os.environ.get("RAY_AUTH_MODE", "").lower() == "token",
            )
        finally:
            ray.shutdown()


def trial_resources(info: RayInfo, gpus_per_trial: float | None = None, parallel: int = 1) -> dict[str, float]:
    """Per-trial resources: one GPU per trial when the cluster has GPUs, else the CPUs split `parallel` ways."""
    gpus = (1.0 if info.gpus > 0 else 0.0) if gpus_per_trial is None else float(gpus_per_trial)
    if gpus > info.gpus:
        raise ResourceError(f"--gpus-per-trial {gpus:g} but the Ray cluster has {info.gpus:g} GPUs")
    cpus = max(1.0, float(int(info.cpus // max(1, parallel))))
    return {"cpu": cpus, "gpu": gpus}


def dashboard_hint(info: RayInfo) -> str:
    """How to open the Ray dashboard of this search (with the token, when token auth is on)."""
    if not info.dashboard_url:
        return "Ray dashboard: not available"
    hint = f"Ray dashboard: {info.dashboard_url}"
    if info.token_auth:
        hint += (" (token auth on: paste the token from ~/.ray/auth_token when the page asks; for the REST API"
                 " send 'Authorization: Bearer <token>'; RAY_AUTH_MODE=disabled turns it off)")
    return hint


@contextmanager
def _local_only(local: bool) -> Iterator[None]:
    """Keep an embedded Ray on 127.0.0.1 while it starts, then put the process' settings back.

    Ray binds a local Ray to the machine's outside interface unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    is "0"; the workers read the variable from the environment they inherit, the driver read it when
    `ray` was imported, hence both the variable and Ray's constant. Not for joining a cluster (the
    variable also disables `ray start`).
    """
    if not local:
        yield
        return
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with scoped_env(_LOCAL_ONLY_ENV, "0"):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextmanager
def scoped_env(name: str, value: str) -> Iterator[None]:
    """`os.environ[name] = value` for the block, then the previous value (or its absence) back."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
