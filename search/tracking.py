"""MLflow records of a search: one parent run, a nested run per trial and one for the final job.

    parent run (kind=search)   params: target, delta, strategy, preset and every Config field
    │                          tags: status, stop_reason; metrics: best_lam, best_t, best_flops_reduction
    ├── trial runs (kind=trial)  params: lam, t; per-epoch flops_reduction, threshold, val_accuracy,
    │                          loss (step = epoch); the trial's final flops_reduction; tag status
    └── final run (kind=final)   accuracy before/after pruning and after fine-tuning, FLOPs, params,
                               latency; the pruned model (`mlflow.pytorch.log_model`, name "pruned_model")

Everything is logged from the driver, with `MlflowClient`s on one tracking URI: the trial runs from
the results Ray Tune reports to the driver, so the trial workers need no MLflow access. The default store is `sqlite:///mlflow.db` in the working directory, what `mlflow ui`
expects; its artifacts go beside the database, in `mlruns/`.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from search import views

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "polarsearch"
KIND = "polarsearch.kind"  # search | trial | final
TRIAL_ID = "polarsearch.trial_id"  # Ray Tune's trial id, to find a trial's run again on --resume
NODE_ID = "polarsearch.node_id"  # the Ray node a trial ran on
_DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
_PARAM_MAX = 6000


class TrackingError(ValueError):
    """A tracking URI that cannot be used; the message is one line."""


def check_uri(uri: str, timeout: float = 3.0) -> None:
    """Raise TrackingError if `uri` cannot work: a server that does not answer, a missing folder."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        path = _sqlite_path(uri)
        if path is not None and not path.parent.is_dir():
            raise TrackingError(f"MLflow store {uri}: folder {path.parent} does not exist")
    elif scheme in ("", "file"):
        path = Path(parsed.path if scheme else uri).expanduser()
        if not path.parent.is_dir():
            raise TrackingError(f"MLflow store {uri}: folder {path.parent} does not exist")
    elif scheme in _DEFAULT_PORTS:
        if not parsed.hostname:
            raise TrackingError(f"MLflow tracking URI {uri!r} has no host")
        try:
            port = parsed.port or _DEFAULT_PORTS[scheme]
        except ValueError:
            raise TrackingError(f"MLflow tracking URI {uri!r} has an invalid port") from None
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                pass
        except OSError as error:
            raise TrackingError(f"cannot reach the MLflow tracking server {uri}: {error.strerror or error}") from None


def absolute_uri(uri: str) -> str:
    """`uri` with a relative SQLite path made absolute (so a resumed search finds its store again)."""
    path = _sqlite_path(uri)
    return f"sqlite:///{path.resolve()}" if path is not None and not path.is_absolute() else uri


def ui_hint(uri: str, experiment_id: str | None = None) -> str:
    """How to look at the runs of this store: with `experiment_id`, the link opens its training runs
    (MLflow 3's machine-learning view) rather than the GenAI overview."""
    page = "" if experiment_id is None else f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if urlparse(uri).scheme in ("http", "https"):
        return f"MLflow UI: {uri.rstrip('/')}{page}"
    return f"MLflow UI: mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000{page}"


class SearchTracker:
    """The MLflow runs of one search, logged from the driver with one client."""

    def __init__(self, uri: str, experiment: str = DEFAULT_EXPERIMENT) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment(experiment)
        self.parent_id: str | None = None
        self._trial_runs: dict[str, str] = {}
        self._last_epoch: dict[str, tuple[int, float]] = {}  # trial_id -> (epoch, F) last logged
        self._ended: set[str] = set()  # trial ids whose end is logged (Tune may re-run one on --resume)
        self._numbers: dict[str, int] = {}  # trial id -> the trial's number (1-based), for names and history
        self._points: dict[str, tuple[str, str, str]] = {}  # run id -> (trial id, λ, t) of the runs found on attach
        self.target: Any = None  # search.views.Target, from the parent run's params

    # -- the search ---------------------------------------------------------------------------
    def start_search(self, params: dict[str, Any], run_name: str | None = None) -> str:
        """Create the parent run with `params`; returns its id."""
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={KIND: "search", "status": "running"})
        self.parent_id = run.info.run_id
        items = [Param(k, _param(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.parent_id, params=items[i:i + 100])
        self.target = views.Target.of_run(self.client, self.parent_id)
        return self.parent_id

    def resume_search(self, parent_id: str) -> None:
        """Continue the parent run `parent_id` (of an interrupted search) and the trial runs under it."""
        self.attach(parent_id)
        self.client.update_run(parent_id, status="RUNNING")
        self.client.set_tag(parent_id, "status", "running")

    def attach(self, parent_id: str) -> None:
        """Log under the existing parent run `parent_id`, continuing the trial runs already there."""
        self.parent_id = parent_id
        self.target = views.Target.of_run(self.client, parent_id)
        for run in self._children("trial"):
            trial_id = run.data.tags[TRIAL_ID]
            self._trial_runs[trial_id] = run.info.run_id
            self._points[run.info.run_id] = (trial_id, run.data.params.get("lam"), run.data.params.get("t"))
            if run.data.tags.get(views.NUMBER, "").isdigit():
                self._numbers[trial_id] = int(run.data.tags[views.NUMBER])
            if run.info.status not in ("RUNNING", "KILLED"):  # KILLED: interrupted, continued on --resume
                self._ended.add(trial_id)
            history = self.client.get_metric_history(run.info.run_id, "flops_reduction")
            if history:
                last = max(history, key=lambda m: (m.step, m.timestamp))
                self._last_epoch[trial_id] = (last.step, last.value)

    def end_search(self, status: str, reason: str, best: Any | None) -> None:
        """Tag the parent run with the outcome (status, stop reason, best trial) and close it."""
        tags = [RunTag("status", status), RunTag("stop_reason", reason or "")]
        metrics = []
        if best is not None:
            values = {"best_lam": best.lam, "best_t": best.t, "best_flops_reduction": best.flops_reduction}
            metrics = [Metric(n, float(v), _now(), 0) for n, v in values.items()]
        self.client.log_batch(self._parent(), metrics=metrics, tags=tags)
        mlflow_status = {"interrupted": "KILLED", "failed": "FAILED"}.get(status, "FINISHED")
        if status in ("interrupted", "failed"):  # the trials still running were stopped with the search
            for run in self._children("trial"):
                if run.info.status == "RUNNING":
                    self.client.set_tag(run.info.run_id, "status", "interrupted")
                    self.client.set_terminated(run.info.run_id, status="KILLED")
        if status not in ("interrupted", "failed") and self._search_views(best, reason, status) != "hit":
            mlflow_status = "FAILED"  # a missed target reads red in the runs table, not a green "Finished"
        self.client.set_terminated(self._parent(), status=mlflow_status)

    # -- the trials (from the results Ray Tune reports) ----------------------------------------
    def log_epoch(self, trial_id: str, result: dict[str, Any]) -> None:
        """One epoch of a trial: its metrics at step = epoch."""
        from trainers.trial import REPORTED

        step, run_id = int(result["epoch"]), self._trial_run(trial_id, result)
        if step <= self._last_epoch.get(trial_id, (0, math.nan))[0]:
            return  # a retried worker reports again the epochs after its checkpoint: logged once
        metrics = [Metric(k, float(result[k]), _now(), step) for k in REPORTED if k != "epoch" and result.get(k) is not None]
        metrics += views.log_epoch_views(self.client, run_id, result, self.target)
        self.client.log_batch(run_id, metrics=metrics)
        self._last_epoch[trial_id] = (step, _float(result.get("flops_reduction")))

    def end_trial(self, trial_id: str, result: dict[str, Any]) -> None:
        """The end of a trial: its final (stable) flops_reduction, epochs and status (once per trial)."""
        if trial_id in self._ended:
            return
        self._ended.add(trial_id)
        run_id = self._trial_run(trial_id, result)
        epochs = int(result.get("epoch") or 0)
        flops = _float(result.get("flops_reduction"))
        metrics = [Metric("epochs", epochs, _now(), 0)]
        if self._last_epoch.get(trial_id) != (epochs, flops):  # else the history already ends with it
            metrics.append(Metric("flops_reduction", flops, _now(), epochs))
        tags = [RunTag("status", str(result.get("status", ""))), RunTag("message", str(result.get("message", "")))]
        if result.get("node_id"):  # the Ray node that trained it (its last one, if it was retried elsewhere)
            tags.append(RunTag(NODE_ID, str(result["node_id"])))
        if result.get("decided"):  # ended early: the side of the window, and the stable F it forecast
            tags.append(RunTag("decided", str(result["decided"])))
            metrics.append(Metric("forecast_flops_reduction", _float(result.get("forecast")), _now(), epochs))
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        number = self._numbers.get(trial_id, 0)
        views.log_trial_views(self.client, run_id, number, result, self.target)
        history = views.history_metrics(number, _float(result.get("lam")), _float(result.get("t")), flops, self.target)
        self.client.log_batch(self._parent(), metrics=history)  # the search's history, step = trial number
        failed = result.get("status") == "failed"
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    # -- the final job ------------------------------------------------------------------------
    def log_final(self, final: Any, lam: float, t: float) -> str:
        """A nested run with the final job's FinalResult and its pruned model; returns the run id."""
        run = self.client.create_run(self.experiment_id, run_name=views.final_name(lam, t, final),
                                     tags={KIND: "final", "mlflow.parentRunId": self._parent()})
        run_id = run.info.run_id
        self.client.log_batch(
            run_id,
            params=[Param("lam", _param(lam)), Param("t", _param(t))],
            metrics=[Metric(k, v, _now(), 0) for k, v in final.metrics().items()],
            tags=[RunTag("model_path", str(final.model_path))],
        )
        views.log_final_views(self.client, run_id, final, self.client.get_run(self._parent()).data.params.get("model"))
        example = final.example_input.detach().cpu().numpy()
        with _fluent_uri(self.uri), mlflow.start_run(run_id=run_id):
            mlflow.pytorch.log_model(final.pruned_model.cpu().eval(), name="pruned_model", input_example=example)
        return run_id

    # -- helpers ------------------------------------------------------------------------------
    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.tags.get(views.EXPERIMENT_KIND[0]) is None:
                self.client.set_experiment_tag(found.experiment_id, *views.EXPERIMENT_KIND)
            return found.experiment_id
        path = _sqlite_path(self.uri)
        location = (path.resolve().parent / "mlruns").as_uri() if path is not None else None
        return self.client.create_experiment(name, artifact_location=location, tags=dict([views.EXPERIMENT_KIND]))

    def _search_views(self, best: Any | None, reason: str, status: str) -> str:
        """Verdict, description, winner and figures of the search, from its trial runs; returns the verdict."""
        trials = [{"number": int(r.data.tags.get(views.NUMBER, 0) or 0), "lam": float(r.data.params["lam"]),
                   "t": float(r.data.params["t"]), "flops_reduction": r.data.metrics.get("flops_reduction"),
                   "status": r.data.tags.get("status"), "run_id": r.info.run_id, "name": r.info.run_name}
                  for r in self._children("trial")]  # fmt: skip
        trials.sort(key=lambda tr: tr["number"])
        return views.log_search_views(self.client, self._parent(), trials, best, self.target, reason, status)

    def _parent(self) -> str:
        if self.parent_id is None:
            raise RuntimeError("start_search() or resume_search() first")
        return self.parent_id

    def _trial_run(self, trial_id: str, result: dict[str, Any]) -> str:
        if trial_id not in self._trial_runs and (run_id := self._lost_run(trial_id, result)) is not None:
            return run_id
        if trial_id not in self._trial_runs:
            lam, t = result.get("lam"), result.get("t")
            number = int(result.get("trial") or len(self._trial_runs) + 1)
            self._numbers[trial_id] = number
            run = self.client.create_run(
                self.experiment_id, run_name=views.trial_name(number, lam, t),
                tags={KIND: "trial", TRIAL_ID: trial_id, "mlflow.parentRunId": self._parent(), "status": "running",
                      views.NUMBER: str(number)},
            )
            self.client.log_batch(run.info.run_id, params=[Param("lam", _param(lam)), Param("t", _param(t))])
            self._trial_runs[trial_id] = run.info.run_id
        return self._trial_runs[trial_id]

    def _lost_run(self, trial_id: str, result: dict[str, Any]) -> str | None:
        """The run of the same proposal (number, λ, t) a killed driver started, whose Tune trial the resumed
        Tuner lost (saved before it began: asked again under a new id); continued, each epoch still once."""
        number, point = result.get("trial"), (_param(result.get("lam")), _param(result.get("t")))
        for run_id, (old_id, lam, t) in self._points.items():
            if self._numbers.get(old_id) == number and (lam, t) == point and old_id not in self._ended:
                del self._points[run_id]
                self._trial_runs[trial_id], self._numbers[trial_id] = run_id, number
                if old_id in self._last_epoch:
                    self._last_epoch[trial_id] = self._last_epoch[old_id]
                self.client.set_tag(run_id, TRIAL_ID, trial_id)
                return run_id
        return None

    def _children(self, kind: str) -> list:
        query = f"tags.mlflow.parentRunId = '{self._parent()}' and tags.`{KIND}` = '{kind}'"
        return list(self.client.search_runs([self.experiment_id], filter_string=query, max_results=10000))


@contextmanager
def _fluent_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API on `uri` for a moment, then as it was: `mlflow.pytorch.log_model` logs
    into the active run only, which the fluent API alone can start on a given store."""
    before = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for an in-memory database)."""
    if not uri.startswith("sqlite://"):
        return None
    path = uri.removeprefix("sqlite://").removeprefix("/")  # sqlite:///rel.db, sqlite:////abs.db
    return Path(path).expanduser() if path and path != ":memory:" else None


def _param(value: Any) -> str:
    return str(value)[:_PARAM_MAX]


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _now() -> int:
    return int(time.time() * 1000)
