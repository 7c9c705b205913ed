"""One search, end to end: strategy + Ray Tune trials + MLflow runs + the final job as a Ray task.

    outcome = run_search(SearchSpec(config, SearchSettings(target=0.5), output=Path("outputs/s1")))

The flow is the style guide's: the strategy proposes (λ, t), a Ray Tune trial trains and reports F
every epoch, the strategy is told the stable F, ... until it stops; then the winner's final job runs
on Ray with the search's resources. Every result is logged to MLflow from this (driver) process;
the outcome is built from the strategy's trials and Tune's results, never read back from MLflow.

The output folder holds `search.json` (the spec and the MLflow parent run: what `--resume` reads),
`ray/tune/` (Tune's experiment: trials, checkpoints, the strategy's state), `optuna.db` (the
optuna strategy's study), `final/` (the final job's exports) and `result.json` (the outcome).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from search.outcome import (
    RESULT_FILE,
    SearchOutcome,
    SearchSpec,
    TrialRow,
    read_spec,
    write_json,
    write_result,
    write_spec,
)

TUNE_NAME = "tune"
Echo = Callable[[str], Any]


def run_search(spec: SearchSpec, resume: bool = False, echo: Echo = print) -> SearchOutcome:
    """Run (or, with `resume`, continue) the search of `spec`; see the module docstring."""
    from search.ray_cluster import dashboard_hint, ray_session, trial_resources
    from search.tracking import absolute_uri, ui_hint

    start = time.perf_counter()
    config, settings = _absolute_paths(spec.config), spec.settings
    with ray_session(spec.ray_address, job_name=f"polarsearch {spec.output.name}") as ray_info:
        echo(dashboard_hint(ray_info))
        resources = trial_resources(ray_info, spec.gpus_per_trial, settings.concurrency)
        _check_device(config.device, resources)
        echo(f"trials: {settings.strategy}, up to {settings.max_trials}, {settings.concurrency} at a time, "
             f"each with {resources['cpu']:g} CPU and {resources['gpu']:g} GPU")
        tracker = _tracker(spec)
        try:
            _open_tracking(tracker, spec, resume)
            outcome = _run_trials(spec, config, resources, tracker, resume, echo)
            if outcome.interrupted:
                outcome.notes.append("interrupted: no final job")
            elif outcome.best is None:
                outcome.notes.append("no trial succeeded: no final job")
            elif spec.skip_final:
                outcome.notes.append("final job skipped (--skip-final)")
            else:
                _run_final(outcome, config, spec.output.resolve() / "final", resources, tracker, echo)
            outcome.seconds = time.perf_counter() - start
            write_result(outcome)  # before the parent run ends: a result that cannot be written fails it
        except KeyboardInterrupt:  # outside Tune's own handling (the final job, MLflow)
            tracker.end_search("interrupted", "interrupted", None)
            raise
        except Exception as error:  # noqa: BLE001 - a full disk, an I/O error, a store that broke: one line
            raise _failed(tracker, spec, error) from None
        tracker.end_search(outcome.status, outcome.reason, outcome.best)

    outcome.notes.append(ui_hint(absolute_uri(spec.mlflow_uri), tracker.experiment_id))  # works from any folder
    return outcome


class SearchFailed(RuntimeError):
    """The search could not go on (a full disk, an I/O error, a tracking store that broke); one line.
    Its parent run is ended FAILED with the reason, and result.json says so where it can be written."""


def _failed(tracker: Any, spec: SearchSpec, error: BaseException) -> SearchFailed:
    """Record the failure wherever it can still be recorded; the SearchFailed to raise."""
    reason = one_line(error)
    if tracker is not None and tracker.parent_id is not None:
        try:
            tracker.end_search("failed", reason, None)
        except Exception as also:  # noqa: BLE001 - e.g. the store is on the full disk too
            reason += f" (and the MLflow run could not be ended: {one_line(also)})"
    try:
        write_json(spec.output / RESULT_FILE, {"status": "failed", "reason": reason,
                                                "parent_run_id": getattr(tracker, "parent_id", None)})  # fmt: skip
    except OSError:
        pass  # the output is what failed: the one line and the MLflow run carry the reason
    return SearchFailed(reason)


def one_line(error: BaseException) -> str:
    """`error` as one line: the exception a Ray task or actor raised rather than its wrapper."""
    if isinstance(error, SearchFailed):
        return str(error)
    cause = getattr(error, "cause", None) or error
    text = " ".join((str(cause).strip().splitlines() or [""])[0].split())
    return f"{type(cause).__name__}: {text}"[:300]


def _raise_io_errors(grid: Any) -> None:
    """SearchFailed when a trial met a full disk, a read-only or failing file system or a quota: the
    machine's fault, not the trial's outcome, and the next trial would meet the same disk."""
    io_errnos = (errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT)
    for result in grid:
        if result.metrics and result.metrics.get("errno") in io_errnos:  # reported by the trial (trainable.io_failure)
            raise SearchFailed(f"a trial failed on an I/O error: {result.metrics['io_error']}")
    try:
        errors = list(grid.errors)
    except Exception:  # noqa: BLE001 - Tune's own error files may be what the full disk cut short
        errors = []
    for error in errors:
        cause = getattr(error, "cause", None) or error
        if isinstance(cause, OSError) and cause.errno in io_errnos:
            raise SearchFailed(f"a trial failed on an I/O error: {one_line(error)}")


def _check_device(device: str, resources: dict[str, float]) -> None:
    """A trial that asks for CUDA needs a GPU share (the local check cannot see a cluster's workers)."""
    from search.ray_cluster import ResourceError

    if device.startswith("cuda") and resources["gpu"] <= 0:
        raise ResourceError(f"--device {device} but the trials get no GPU (the Ray cluster has none, "
                            "or --gpus-per-trial 0)")  # fmt: skip


def _tracker(spec: SearchSpec) -> Any:
    """The search's MLflow writer; a new SQLite store is created by one search at a time."""
    from search.tracking import SearchTracker

    try:
        with _store_lock(spec.mlflow_uri):
            return SearchTracker(spec.mlflow_uri, spec.experiment)
    except Exception as error:  # noqa: BLE001 - the store was checked; it broke since (or is full)
        raise SearchFailed(f"MLflow store {spec.mlflow_uri}: {one_line(error)}") from None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on the folder of a SQLite store while it is opened: two searches starting
    together on a new store would both run MLflow's schema migration, and the second one fails."""
    from search.tracking import _sqlite_path

    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    folder = os.open(path.expanduser().resolve().parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the lock


def _open_tracking(tracker: Any, spec: SearchSpec, resume: bool) -> None:
    """The parent run of the search: a new one (and search.json), or the saved one."""
    from search.tracking import absolute_uri

    spec.output.mkdir(parents=True, exist_ok=True)
    if resume:
        tracker.resume_search(read_spec(spec.output)["parent_run_id"])
    else:
        parent = tracker.start_search(spec.params(), run_name=spec.output.name)
        write_spec(spec, parent, absolute_uri(spec.mlflow_uri))


def _run_trials(spec: SearchSpec, config: Any, resources: dict[str, float], tracker: Any, resume: bool,
                echo: Echo) -> SearchOutcome:  # fmt: skip
    """The trials, through one Ray Tune run steered by the strategy; the outcome from both."""
    from search import tune
    from search.report import trial_handlers
    from search.strategies import build
    from search.trainable import trial_trainable

    optuna = {"storage": f"sqlite:///{(spec.output / 'optuna.db').resolve()}", "study_name": spec.output.name}
    strategy = build(spec.settings, **(optuna if spec.settings.strategy == "optuna" else {}))
    earlier = {} if resume else _recall(strategy, spec, config, tracker, echo)
    searcher = tune.AskTellSearcher(strategy)
    storage = spec.output / "ray"
    grid = [] if strategy.finished else tune.run_tuner(
        trial_trainable(config), searcher, resources=resources, name=TUNE_NAME, storage_path=storage,
        max_trials=spec.settings.max_trials, parallel=spec.settings.concurrency, resume=resume,
        workers=config.workers_per_trial,
        callbacks=[tune.TrialEvents(trial_handlers, spec.mlflow_uri, spec.experiment, tracker.parent_id,
                                    optuna if spec.settings.strategy == "optuna" else None)],
    )  # fmt: skip
    _raise_io_errors(grid)
    if resume:  # the Tuner ran the searcher it had saved: read the strategy's final state back
        tune.restored_searcher(searcher, storage, TUNE_NAME)  # its recalled trials too (their rows: no run)
    reported = {result.metrics.get("trial_id"): result.metrics for result in grid}
    trial_ids = {proposal: trial_id for trial_id, proposal in searcher.proposals.items()}
    rows = [TrialRow.earlier(tr, earlier.get((tr.lam, tr.flops_reduction))) for tr in strategy.known]
    rows += [TrialRow.of(tr, reported.get(trial_ids.get(tr.id)), trial_ids.get(tr.id)) for tr in strategy.trials]
    outcome = SearchOutcome(trials=rows, best=strategy.best, converged=strategy.converged, reason=strategy.reason,
                            output=spec.output, parent_run_id=tracker.parent_id)  # fmt: skip
    if not strategy.finished:  # Ctrl-C: Tune stopped and saved its state
        outcome.interrupted, outcome.reason = True, "interrupted"
    return outcome


def _recall(strategy: Any, spec: SearchSpec, config: Any, tracker: Any, echo: Echo) -> dict[tuple[float, float], Any]:
    """Start `strategy` from the trials earlier searches of the same trainer config ran to a stable F
    (search.earlier); the ones it took, by (λ, F). Logged as the parent run's param `earlier_trials`."""
    from search.earlier import earlier_trials

    if not spec.settings.reuse_trials or not strategy.recalls:
        return {}
    found = earlier_trials(tracker.client, tracker.experiment_id, config, exclude=tracker.parent_id)
    taken = strategy.recall(trial.point for trial in found)
    used = {(tr.lam, tr.flops_reduction) for tr in strategy.known}
    runs = [trial.run_id for trial in found if (trial.lam, trial.flops_reduction) in used]
    tracker.client.log_param(tracker.parent_id, "earlier_trials", str(taken))
    if runs:  # where each reused trial's curves are, in the MLflow UI
        tracker.client.set_tag(tracker.parent_id, "polarsearch.earlier_runs", ",".join(runs)[:5000])
    if found:
        ending = (f"the answer is one of them (F={strategy.best.flops_reduction:.3f}): no trial to train"
                  if strategy.finished else "the search starts from them")  # fmt: skip
        echo(f"earlier searches of this config in the MLflow experiment: {len(found)} trials ran to a stable F, "
             f"{taken} at t={spec.settings.t_init:g} reused; {ending} (--no-reuse-trials to train afresh)")
    return {(trial.lam, trial.flops_reduction): trial for trial in found}


def _run_final(outcome: SearchOutcome, config: Any, output: Path, resources: dict[str, float], tracker: Any,
               echo: Echo) -> None:  # fmt: skip
    """The winner's final job as a Ray task, logged as the nested final run; a failure is recorded."""
    from search import tune

    lam, t = outcome.best.lam, outcome.best.t
    echo(f"final job: lam={lam:.6g} t={t:.4g} (a Ray task with the search's resources)")
    try:
        outcome.final = tune.run_final_job(_final_job, config, lam, t, str(output), resources=resources)
        outcome.final_run_id = tracker.log_final(outcome.final, lam, t)
    except Exception as error:  # noqa: BLE001 - the search stands; its final job's failure is reported
        cause = getattr(error, "cause", None) or error  # a RayTaskError wraps the job's own exception
        outcome.final_error = f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}"


def _final_job(config: Any, lam: float, t: float, output_dir: str) -> Any:
    """The Ray task of the final job (trainers.final.run_final)."""
    from trainers.final import run_final

    return run_final(config, lam, t, output_dir)


def _absolute_paths(config: Any) -> Any:
    """Ray runs trials in their own folders: make the config's paths absolute first."""
    changes = {name: str(Path(getattr(config, name)).expanduser().resolve())
               for name in ("data_dir", "cache_dir") if getattr(config, name) is not None}  # fmt: skip
    return dataclasses.replace(config, **changes)
