"""The Ray a search runs on: start an embedded local one, or join a running cluster, and describe it.

Local by default: `ray_session(None)` starts an embedded single-node Ray on 127.0.0.1 with its
dashboard, and shuts it down at the end; `ray_session("host:port")` joins a running cluster
(`check_ray_address` first asks the GCS there what `ray.init` will ask, and tells the CLI in one
line when no GCS answers). The `RayInfo` it yields gives the per-trial resources
(`trial_resources`) and the dashboard line to print (`dashboard_hint`). An embedded Ray's
processes are gone after any exit of its driver: shut down at the end, or, after a SIGKILL, stopped
by the next start (`stop_stale_ray`). Nothing here knows about Tune; `search.tune` runs the trials.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray

# Ray reads this once, when `ray` is imported: "0" keeps a local Ray on the loopback address.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# In the session folder of an embedded Ray: the mark (pid:start time) of the driver that started it.
OWNER_FILE = "polarsearch-driver"


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
    """Raise RayAddressError unless a Ray GCS answers at `address` (host:port) within `timeout` seconds.

    The check asks what `ray.init` will ask, where it will ask it: Ray replaces a loopback host by
    this machine's address, then calls the GCS over gRPC and retries for ever when something else
    answers (a dashboard port, an HTTP server). A GCS that wants Ray's auth token answers too.
    Ray Client addresses (ray://) are refused: Tune would run this driver's loop, MLflow logging
    included, on the cluster; run polarsearch on a node of the cluster instead.
    """
    if "://" in address:
        raise RayAddressError(f"Ray address {address!r}: give the cluster's GCS as host:port (e.g. 10.0.0.5:6379) "
                              "and run polarsearch on a node of the cluster; ray:// (Ray Client) is not supported")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayAddressError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379)")
    from ray._private.services import canonicalize_bootstrap_address

    try:
        target = canonicalize_bootstrap_address(address)
    except (OSError, ValueError) as error:
        raise RayAddressError(f"cannot resolve the Ray address {address}: {error}") from None
    _ask_gcs(target, address, timeout)


def _ask_gcs(target: str, address: str, timeout: float) -> None:
    """One GetClusterId call to the GCS at `target`, with a deadline."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    where = address if target == address else f"{address} (Ray connects to {target})"
    with grpc.insecure_channel(target) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return  # a GCS with token auth: ray.init sends the token
            detail = " ".join((error.details() or str(error.code())).split())[:200]
            raise RayAddressError(f"no Ray GCS answers at {where}: {detail}") from None


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, job_name: str | None = None) -> Iterator[RayInfo]:
    """Ray for the duration of a search: an embedded local one (address None) or a running cluster.

    The embedded Ray listens on 127.0.0.1 only, with the dashboard on; it is shut down at the end.
    Joining a cluster leaves it running (only this driver disconnects). `job_name` is the job's
    name in the dashboard's Jobs table; workers' output stays in their logs (the dashboard's),
    not on this console, where the search prints its own lines.
    """
    named = {"job_config": ray.job_config.JobConfig(metadata={"job_name": job_name})} if job_name else {}
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process")
    local = address is None
    if local:
        stop_stale_ray()
    with _local_only(local):
        if local:
            context = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                               logging_level="warning", configure_logging=True, log_to_driver=False, **named)
        else:
            context = ray.init(address=address, logging_level="warning", log_to_driver=False, **named)
        try:
            if local:
                session = Path(ray._private.worker._global_node.get_session_dir_path())
                (session / OWNER_FILE).write_text(_mark(os.getpid()))
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


def stop_stale_ray() -> int:
    """SIGKILL the processes of embedded Rays whose driver is gone; returns how many.

    A driver killed with SIGKILL cannot shut its Ray down, and Ray's dashboard and runtime-env agents
    outlive it (their titles and environments rewritten, their parents gone). What still ties them
    to their Ray is the session folder their logs are open in; `ray_session` leaves its driver's
    mark there (`OWNER_FILE`), so the next start stops the processes of sessions whose driver is
    dead. A session without the mark (a `ray start` cluster) or with a live driver is left alone.
    Linux (/proc) only.
    """
    owners: dict[Path, bool] = {}  # session folder -> stale
    stopped = 0
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:  # gone, or not ours to read
            continue
        sessions = {Path(link[:link.index("/", link.index("/session_") + 1)]) for link in links
                    if "/session_" in link and "/" in link[link.index("/session_") + 1:]}  # fmt: skip
        for session in sessions:
            if session not in owners:
                mark = (session / OWNER_FILE).read_text() if (session / OWNER_FILE).is_file() else None
                owners[session] = mark is not None and mark != _mark(int(mark.partition(":")[0] or 0))
        if any(owners[s] for s in sessions) and int(entry.name) != os.getpid():
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                stopped += 1
            except OSError:
                pass
    return stopped


def _mark(pid: int) -> str:
    """pid:start time of a process ("" when it is gone): a pid the kernel reused gets another mark."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{pid}:{stat.rpartition(')')[2].split()[19]}"


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
