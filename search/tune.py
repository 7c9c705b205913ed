"""The Ray edge of the search: a Tune `Searcher` over any ask/tell strategy, the trial trainable,
the Tuner run, the final job as a Ray task, and starting (or joining) Ray.

The strategies (Algorithm 1 and the others) never import Ray: `AskTellSearcher` turns Tune's
`suggest(trial_id)` into `ask()` and `on_trial_complete` into `tell(F, proposal)`. A trial is
`trainers.trial.run_trial` reporting every epoch through `tune.report` with a checkpoint, so a
killed trial resumes from its last epoch; its last report carries the stable F and its status.

Local by default: `ray_session(None)` starts an embedded single-node Ray on 127.0.0.1 with its
dashboard, and shuts it down at the end; `ray_session("host:port")` joins a running cluster.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import Searcher

from search.base import WAIT

RUNNING = "running"
"""The `status` of a trial's per-epoch reports; its last report has run_trial's final status."""

EPOCH_KEYS = ("epoch", "flops_reduction", "val_accuracy", "threshold", "loss")
# Ray reads this once, when `ray` is imported: "0" keeps a local Ray on the loopback address.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayAddressError(ValueError):
    """A `--ray-address` that is malformed or that nothing answers on; one line."""


class ResourceError(ValueError):
    """The cluster lacks what a trial asks for (e.g. --gpus-per-trial on a cluster without GPUs); one line."""


class AskTellSearcher(Searcher):
    """Ray Tune `Searcher` over an ask/tell strategy (`search.base.Strategy` protocol).

    `suggest` returns {"lam", "t"}, None while the strategy waits for outstanding results (Tune asks
    again later) and `Searcher.FINISHED` once it has finished; `on_trial_complete` tells the strategy
    the trial's final `flops_reduction` (an errored trial or a missing/NaN F is a failed trial).
    """

    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def __init__(self, strategy: Any, metric: str = "flops_reduction") -> None:
        super().__init__(metric=metric, mode="min")
        self.strategy = strategy
        self._proposals: dict[str, tuple[float, float]] = {}  # trial_id -> its (lam, t), until told

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the strategy owns the search space; Tune's metric/mode are not used

    def suggest(self, trial_id: str) -> dict[str, float] | str | None:
        proposal = self.strategy.ask()
        if proposal is None:
            return Searcher.FINISHED
        if proposal is WAIT:
            return None
        lam, t = float(proposal[0]), float(proposal[1])
        self._proposals[trial_id] = (lam, t)
        return {"lam": lam, "t": t}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        proposal = self._proposals.pop(trial_id, None)
        if proposal is None:
            return  # not ours (or told already)
        value = None if error or not result else result.get(self.metric)
        if value is not None and not math.isfinite(float(value)):
            value = None
        self.strategy.tell(value, proposal)

    def save(self, checkpoint_path: str) -> None:
        """The strategy's `state_dict()` and the outstanding trials, as JSON, written atomically."""
        state = {"strategy": self.strategy.state_dict(), "proposals": self._proposals}
        tmp = f"{checkpoint_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.strategy.load_state_dict(state["strategy"])
        self._proposals = {k: (float(v[0]), float(v[1])) for k, v in state["proposals"].items()}


# ---------------------------------------------------------------------------------------------
# The trial


def trial_trainable(config: Any) -> Callable:
    """The Tune trainable of a search whose trials all share `config` (trainers.config.Config)."""
    return tune.with_parameters(polarized_trial, base=config)


def polarized_trial(params: dict[str, Any], base: Any) -> None:
    """Tune function trainable: one short polarized run at (lam, t), `base` being the Config."""
    from trainers.trial import run_trial

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # a line per checkpoint is noise beside Tune's table
    lam, t = float(params["lam"]), float(params["t"])
    work = Path(tempfile.mkdtemp(prefix="polarsearch-trial-"))
    try:
        restored = tune.get_checkpoint()
        if restored is not None:  # a killed trial resumes from its last epoch (trial.pt)
            with restored.as_directory() as folder:
                shutil.copytree(folder, work, dirs_exist_ok=True)

        def report(metrics: dict[str, Any]) -> None:
            tune.report(epoch_metrics(metrics, lam, t), checkpoint=tune.Checkpoint.from_directory(work))

        result = run_trial(base, lam, t, report=report, checkpoint_dir=work)
        tune.report(final_metrics(result, lam, t))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def epoch_metrics(metrics: dict[str, Any], lam: float, t: float) -> dict[str, Any]:
    """One epoch's report, in the column order of Tune's table."""
    row: dict[str, Any] = {"lam": lam, "t": t}
    row.update({key: _number(metrics.get(key)) for key in EPOCH_KEYS})
    row["epoch"] = int(metrics["epoch"])
    row["status"] = RUNNING
    return row


def final_metrics(result: Any, lam: float, t: float) -> dict[str, Any]:
    """The last report of a trial: its stable F (NaN if it failed), status, epochs and message."""
    last_loss = result.history[-1].get("loss") if result.history else None
    return {"lam": lam, "t": t, "epoch": int(result.epochs), "flops_reduction": _number(result.flops_reduction),
            "val_accuracy": _number(result.val_accuracy), "threshold": _number(result.threshold),
            "loss": _number(last_loss), "status": str(result.status), "message": str(result.message or "")}


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


Handlers = tuple[Callable[[str, dict], None], Callable[[str, dict], None]]


class TrialEvents(tune.Callback):
    """Forwards trial results, in the driver, to plain handlers (MLflow logging, progress lines).

    `make_handlers(*args)` returns `(on_epoch, on_end)`: `on_epoch(trial_id, result)` for every
    per-epoch report, `on_end(trial_id, result)` once per trial with its final report (or, for a
    trial that raised, a failed result built here). Tune pickles its callbacks with the experiment
    and a resumed Tuner gets those copies back, so this holds only the picklable recipe and builds
    the handlers when the experiment starts, in the process that runs it.
    """

    def __init__(self, make_handlers: Callable[..., Handlers], *args: Any) -> None:
        self._make_handlers = make_handlers
        self._args = args
        self._handlers: Handlers | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handlers": None}

    def setup(self, **info: Any) -> None:
        self._handlers = self._make_handlers(*self._args)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        on_epoch, on_end = self._handlers
        if result.get("status") == RUNNING:
            on_epoch(trial.trial_id, result)
        else:
            on_end(trial.trial_id, result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self._handlers[1](trial.trial_id, {
            "lam": trial.config.get("lam"), "t": trial.config.get("t"), "epoch": int(last.get("epoch") or 0),
            "flops_reduction": math.nan, "val_accuracy": last.get("val_accuracy", math.nan), "status": "failed",
            "message": f"trial raised an error (see {trial.error_file or 'its Ray log'})",
        })  # fmt: skip


def run_tuner(
    trainable: Callable,
    searcher: AskTellSearcher,
    *,
    resources: dict[str, float],
    name: str,
    storage_path: str | Path,
    max_trials: int,
    parallel: int = 1,
    callbacks: list | None = None,
    resume: bool = False,
    verbose: int = 1,
) -> tune.ResultGrid:
    """Run the search's trials through one Tuner (or resume the Tuner saved at storage_path/name).

    `trainable(params)` is wrapped with `resources` per trial; actors are reused between trials.
    """
    trainable = tune.with_resources(trainable, resources)
    experiment = Path(storage_path).resolve() / name
    if resume:
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=max_trials,
                max_concurrent_trials=parallel,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(Path(storage_path).resolve()),
                verbose=verbose,
                callbacks=callbacks,
                progress_reporter=tune.CLIReporter(
                    parameter_columns=["lam", "t"],
                    metric_columns={"epoch": "epoch", "flops_reduction": "F", "val_accuracy": "accuracy",
                                    "status": "trial result"},
                    max_report_frequency=30,
                ),
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    # The legacy output engine is the one that honours the CLIReporter's columns (λ, t, F, accuracy);
    # num_to_keep=1 forces a state snapshot per checkpoint, which Tune warns about when epochs are short.
    with _environ("RAY_AIR_NEW_OUTPUT", "0"), _environ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"):
        return tuner.fit()


def restored_searcher(searcher: AskTellSearcher, storage_path: str | Path, name: str) -> AskTellSearcher:
    """`searcher` loaded with the newest state a Tuner saved in storage_path/name (after a resume)."""
    searcher.restore_from_dir(str(Path(storage_path).resolve() / name))
    return searcher


def run_remote(fn: Callable, *args: Any, resources: dict[str, float]) -> Any:
    """fn(*args) as one Ray task with `resources` (the final job), waiting for its result."""
    task = ray.remote(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0), max_calls=1)(fn)
    ref = task.remote(*args)
    try:
        return ray.get(ref)
    except KeyboardInterrupt:
        ray.cancel(ref, force=True)
        raise


# ---------------------------------------------------------------------------------------------
# Starting Ray


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
        with _environ(_LOCAL_ONLY_ENV, "0"):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
