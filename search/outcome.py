"""What a search leaves behind: its spec (`search.json`, what `--resume` reads), the trials table
and the outcome (`result.json`), built from the strategy's trials and Ray Tune's results.

The fields of a trial row live on `TrialRow`, those of the final job on `trainers.final.FinalResult`
(`summary()`); everything here is plain data and JSON files, no Ray and no MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_FILE = "search.json"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class SearchSpec:
    """Everything one search needs: the trainer's Config, the SearchSettings, where it runs and logs."""

    config: Any  # trainers.config.Config
    settings: Any  # search.settings.SearchSettings
    output: Path
    preset: str | None = None
    ray_address: str | None = None
    mlflow_uri: str = "sqlite:///mlflow.db"
    experiment: str = "polarsearch"
    gpus_per_trial: float | None = None
    skip_final: bool = False

    def params(self) -> dict[str, Any]:
        """The parent run's params: every search setting and every Config field."""
        return {**self.config.to_dict(), **self.settings.to_dict(), "preset": self.preset}


@dataclass(frozen=True)
class TrialRow:
    """One trial of a search as the table shows it: the strategy's proposal and what the trial reported."""

    id: int  # the proposal's id
    lam: float
    t: float
    flops_reduction: float | None  # the stable F; for a trial decided early, the forecast the strategy was told
    status: str  # the trial's: stable | max_epochs | decided | failed; earlier: recalled, not trained here
    epochs: int | None = None
    val_accuracy: float | None = None
    message: str = ""
    trial_id: str | None = None  # Ray Tune's
    decided: str | None = None  # above | below: the side of the strategy's window it stopped on early

    @classmethod
    def of(cls, trial: Any, reported: dict[str, Any] | None, trial_id: str | None) -> TrialRow:
        """The row of a strategy `Trial` and the last result Tune has of it (None when it has none)."""
        reported = reported or {}
        status = str(reported.get("status") or ("failed" if trial.failed else "ok"))
        return cls(id=trial.id, lam=trial.lam, t=trial.t, flops_reduction=trial.flops_reduction,
                   status="failed" if trial.failed else status, epochs=_int(reported.get("epoch")),
                   val_accuracy=finite(reported.get("val_accuracy")), message=str(reported.get("message") or ""),
                   trial_id=trial_id, decided=trial.decided)  # fmt: skip

    @classmethod
    def earlier(cls, trial: Any, found: Any | None) -> TrialRow:
        """The row of a trial recalled from an earlier search (`found`: its search.earlier.EarlierTrial)."""
        return cls(id=trial.id, lam=trial.lam, t=trial.t, flops_reduction=trial.flops_reduction, status="earlier",
                   epochs=None if found is None else found.epochs,
                   val_accuracy=None if found is None else finite(found.val_accuracy),
                   message="" if found is None else f"trained by an earlier search (MLflow run {found.run_id})")  # fmt: skip


@dataclass
class SearchOutcome:
    """What a search found: the trials, the winner, why it stopped, and the final job."""

    trials: list[TrialRow]
    best: Any | None  # the strategy's Trial closest to the target
    converged: bool
    reason: str
    output: Path
    parent_run_id: str = ""
    final: Any | None = None  # trainers.final.FinalResult
    final_run_id: str | None = None
    final_error: str = ""
    interrupted: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """interrupted | final_failed | converged | stopped (the parent run's status tag)."""
        if self.interrupted:
            return "interrupted"
        if self.final_error:
            return "final_failed"
        return "converged" if self.converged else "stopped"

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "status": self.status, "converged": self.converged, "reason": self.reason,
            "best": None if best is None else {"lam": best.lam, "t": best.t, "flops_reduction": best.flops_reduction},
            "trials": [dataclasses.asdict(row) for row in self.trials],
            "final": None if self.final is None else self.final.summary(), "final_error": self.final_error,
            "parent_run_id": self.parent_run_id, "final_run_id": self.final_run_id, "seconds": self.seconds,
        }  # fmt: skip


def write_spec(spec: SearchSpec, parent_run_id: str, mlflow_uri: str) -> None:
    """search.json: the settings, the Config and the MLflow parent run of the search in `spec.output`."""
    data = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("config", "settings", "output")}
    data.update(config=spec.config.to_dict(), settings=spec.settings.to_dict(), parent_run_id=parent_run_id,
                mlflow_uri=mlflow_uri)  # fmt: skip
    write_json(spec.output / SPEC_FILE, data)


def read_spec(output: Path) -> dict[str, Any]:
    return json.loads((output / SPEC_FILE).read_text())


def write_result(outcome: SearchOutcome) -> None:
    write_json(outcome.output / RESULT_FILE, outcome.to_dict())


def write_json(path: Path, data: dict[str, Any]) -> None:
    """`data` as strict JSON (NaN and infinities as null), written atomically: the whole file or none."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(strict(data), indent=2, default=str, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except BaseException:  # a full disk: no half-written file left beside the old one (or none)
        tmp.unlink(missing_ok=True)
        raise


def strict(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±inf) as None, inside dicts and lists too: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def finite(value: Any) -> float | None:
    """`value` as a float, or None when it is missing or not finite."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _int(value: Any) -> int | None:
    return None if finite(value) is None else int(value)
