"""One search, end to end: strategy + Ray Tune trials + MLflow runs + the final job as a Ray task.

    spec = SearchSpec(config, target=0.5, delta=0.05, output=Path("outputs/s1"))
    outcome = run_search(spec)          # the CLI's default command, validated inputs only

The flow is the style guide's: the strategy proposes (λ, t), a Ray Tune trial trains and reports F
every epoch, the strategy is told the stable F, ... until it stops; then the winner's final job runs
on Ray with the search's resources. Every result is logged to MLflow from this (driver) process.

The output folder holds `search.json` (the spec and the MLflow parent run: what `--resume` reads),
`ray/tune/` (Tune's experiment: trials, checkpoints, the strategy's state), `optuna.db` (the
optuna strategy's study), `final/` (the final job's exports) and `result.json` (the outcome).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.tracking import DEFAULT_EXPERIMENT, DEFAULT_URI

TUNE_NAME = "tune"
SPEC_FILE = "search.json"
RESULT_FILE = "result.json"
Echo = Callable[[str], Any]


@dataclass(frozen=True)
class SearchSpec:
    """Everything one search needs; the CLI builds it from validated flags (or from search.json)."""

    config: Any  # trainers.config.Config
    target: float
    delta: float
    output: Path
    strategy: str = "algorithm1"
    preset: str | None = None
    parallel: int = 1
    ray_address: str | None = None
    mlflow_uri: str = DEFAULT_URI
    experiment: str = DEFAULT_EXPERIMENT
    gpus_per_trial: float | None = None
    skip_final: bool = False

    def params(self) -> dict[str, Any]:
        """The parent run's params: the search settings and every Config field."""
        search = {"target": self.target, "delta": self.delta, "strategy": self.strategy, "preset": self.preset,
                  "parallel": self.parallel}
        return {**self.config.to_dict(), **search}


@dataclass
class SearchOutcome:
    """What a search found: the trials, the winner, why it stopped, and the final job."""

    trials: list[dict[str, Any]]
    best: tuple[float, float, float] | None
    converged: bool
    reason: str
    final: Any | None = None  # trainers.final.FinalResult
    final_run_id: str | None = None
    parent_run_id: str = ""
    output: Path = Path()
    seconds: float = 0.0
    interrupted: bool = False
    final_error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """interrupted | final_failed | converged | stopped (the parent run's status tag)."""
        if self.interrupted:
            return "interrupted"
        if self.final_error:
            return "final_failed"
        return "converged" if self.converged else "stopped"


def run_search(spec: SearchSpec, resume: bool = False, echo: Echo = print) -> SearchOutcome:
    """Run (or, with `resume`, continue) the search of `spec`; see the module docstring."""
    from search.ray_cluster import dashboard_hint, ray_session, trial_resources
    from search.tracking import runs_table, ui_hint

    start = time.perf_counter()
    config = _absolute_paths(spec.config)
    with ray_session(spec.ray_address) as ray_info:
        echo(dashboard_hint(ray_info))
        resources = trial_resources(ray_info, spec.gpus_per_trial, spec.parallel)
        echo(f"trials: {spec.strategy}, up to {config.max_trials}, {spec.parallel} at a time, "
             f"each with {resources['cpu']:g} CPU and {resources['gpu']:g} GPU")
        tracker = _open_tracking(spec, resume)
        try:
            strategy = _run_trials(spec, config, resources, tracker.parent_id, resume)
            outcome = SearchOutcome(trials=[], best=strategy.best, converged=strategy.converged,
                                    reason=strategy.reason, parent_run_id=tracker.parent_id, output=spec.output)
            if not strategy.finished:  # Ctrl-C: Tune stopped and saved its state
                outcome.interrupted, outcome.reason = True, "interrupted"
            elif strategy.best is None:
                outcome.notes.append("no trial succeeded: no final job")
            elif spec.skip_final:
                outcome.notes.append("final job skipped (--skip-final)")
            else:
                _run_final(outcome, config, spec.output.resolve() / "final", resources, tracker, echo)
        except KeyboardInterrupt:  # outside Tune's own handling (the final job, MLflow)
            tracker.end_search("interrupted", "interrupted", None)
            raise
        tracker.end_search(outcome.status, outcome.reason, outcome.best)

    outcome.trials = runs_table(spec.mlflow_uri, spec.experiment, outcome.parent_run_id).to_dict("records")
    outcome.seconds = time.perf_counter() - start
    _write_result(outcome)
    outcome.notes.append(ui_hint(spec.mlflow_uri))
    return outcome


def _open_tracking(spec: SearchSpec, resume: bool) -> Any:
    """The MLflow tracker of the search: a new parent run (and search.json), or the saved one."""
    from search.tracking import SearchTracker

    spec.output.mkdir(parents=True, exist_ok=True)
    tracker = SearchTracker(spec.mlflow_uri, spec.experiment)
    if resume:
        tracker.resume_search(read_spec_file(spec.output)["parent_run_id"])
    else:
        write_spec_file(spec, tracker.start_search(spec.params(), run_name=spec.output.name))
    return tracker


def _run_trials(spec: SearchSpec, config: Any, resources: dict[str, float], parent_id: str, resume: bool) -> Any:
    """The trials, through one Ray Tune run steered by the strategy; returns the strategy at the end."""
    from search import tune

    strategy = _make_strategy(spec, config)
    searcher = tune.AskTellSearcher(strategy)
    storage = spec.output / "ray"
    tune.run_tuner(
        tune.trial_trainable(config), searcher, resources=resources, name=TUNE_NAME, storage_path=storage,
        max_trials=config.max_trials, parallel=spec.parallel, resume=resume,
        callbacks=[tune.TrialEvents(trial_handlers, spec.mlflow_uri, spec.experiment, parent_id)],
    )
    if resume:  # the Tuner ran the searcher it had saved: read the strategy's final state back
        tune.restored_searcher(searcher, storage, TUNE_NAME)
    return strategy


def _run_final(outcome: SearchOutcome, config: Any, output: Path, resources: dict[str, float], tracker: Any,
               echo: Echo) -> None:  # fmt: skip
    """The winner's final job as a Ray task, logged as the nested final run; a failure is recorded."""
    from search import tune

    lam, t, _ = outcome.best
    echo(f"final job: lam={lam:.6g} t={t:.4g} (a Ray task with the search's resources)")
    try:
        outcome.final = tune.run_remote(_final_job, config, lam, t, str(output), resources=resources)
        outcome.final_run_id = tracker.log_final(outcome.final, lam, t)
    except Exception as error:  # noqa: BLE001 - the search stands; its final job's failure is reported
        cause = getattr(error, "cause", None) or error  # a RayTaskError wraps the job's own exception
        outcome.final_error = f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}"


def _final_job(config: Any, lam: float, t: float, output_dir: str) -> Any:
    """The Ray task of the final job (trainers.final.run_final)."""
    from trainers.final import run_final

    return run_final(config, lam, t, output_dir)


def _make_strategy(spec: SearchSpec, config: Any) -> Any:
    from search.strategies import make

    optuna = spec.strategy == "optuna"
    return make(
        spec.strategy, spec.target, spec.delta, lam_low=config.lam_low, lam_high=config.lam_high,
        t=config.t_init, t_step=config.t_step, max_trials=config.max_trials, parallel=spec.parallel,
        seed=config.seed, storage=f"sqlite:///{(spec.output / 'optuna.db').resolve()}" if optuna else None,
        study_name=spec.output.name if optuna else None,
    )


def trial_handlers(mlflow_uri: str, experiment: str, parent_run_id: str) -> tuple[Callable, Callable]:
    """The driver's handlers of trial results (see tune.TrialEvents): log each epoch and each trial's
    end to MLflow under the search's parent run, and print one line per finished trial."""
    from search.tracking import SearchTracker

    tracker = SearchTracker(mlflow_uri, experiment)
    tracker.attach(parent_run_id)  # and the trial runs of an interrupted session, on --resume
    done = 0

    def on_end(trial_id: str, result: dict[str, Any]) -> None:
        nonlocal done
        tracker.end_trial(trial_id, result)
        done += 1
        f = result.get("flops_reduction")
        flops = "failed" if f is None or not math.isfinite(f) else f"F={f:.3f}"
        print(f"trial {done}: lam={result['lam']:.6g} t={result['t']:.4g} -> {flops} ({result.get('status')}, "
              f"{result.get('epoch')} epochs, acc {result.get('val_accuracy', math.nan):.3f})", flush=True)

    return tracker.log_epoch, on_end


def _absolute_paths(config: Any) -> Any:
    """Ray runs trials in their own folders: make the config's paths absolute first."""
    changes = {name: str(Path(getattr(config, name)).expanduser().resolve())
               for name in ("data_dir", "cache_dir") if getattr(config, name) is not None}
    return dataclasses.replace(config, **changes)


def write_spec_file(spec: SearchSpec, parent_run_id: str) -> None:
    from search.tracking import absolute_uri

    data = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("config", "output")}
    data.update(config=spec.config.to_dict(), parent_run_id=parent_run_id, mlflow_uri=absolute_uri(spec.mlflow_uri))
    _write_json(spec.output / SPEC_FILE, data)


def read_spec_file(output: Path) -> dict[str, Any]:
    return json.loads((output / SPEC_FILE).read_text())


def _write_result(outcome: SearchOutcome) -> None:
    final = outcome.final
    data = {
        "best": outcome.best, "converged": outcome.converged, "reason": outcome.reason,
        "interrupted": outcome.interrupted, "final_error": outcome.final_error, "seconds": outcome.seconds, "parent_run_id": outcome.parent_run_id,
        "final_run_id": outcome.final_run_id, "trials": outcome.trials,
        "final": None if final is None else final.summary(),
    }
    _write_json(outcome.output / RESULT_FILE, data)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
