"""The trials earlier searches already trained, read back from the MLflow store, so that a new search
does not pay again for answers already known (issue 13; `search: reuse_trials`, on by default).

A trial's F depends on its (λ, t) and on the trainer config — model, data, training recipe, the
trial's stopping rule — and not on where or how fast it ran. An earlier search whose parent run
records the same value for every Config field but those of `NOT_OUTCOME` (paths, devices, threads,
workers, the final job's own settings) trained trials this search could have asked for: those that
ran until F was stable (or to max_epochs) are given to the strategy (`Strategy.recall`). A trial
decided early, failed or interrupted is not: its F is not the stable one.

    known = earlier_trials(client, experiment_id, config)      # [EarlierTrial(lam, t, F, epochs, run_id, ...)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Config fields that do not change a trial's F: where the data and caches are, what ran it, and the
# final job's own settings (its epochs matter: the trials' learning-rate schedule spans them).
NOT_OUTCOME = frozenset({
    "data_dir", "download", "cache_dir", "device", "num_workers", "threads", "workers_per_trial", "final_workers",
    "latency_runs", "eval_batch_size", "finetune_epochs", "finetune_lr", "finetune_schedule",
    "finetune_milestones", "finetune_decay",
})  # fmt: skip
REUSABLE = ("stable", "max_epochs")  # the trial statuses whose F a strategy was told as the stable F


@dataclass(frozen=True)
class EarlierTrial:
    """A trial of an earlier search of the same trainer config: (λ, t), its F, epochs, MLflow run, accuracy."""

    lam: float
    t: float
    flops_reduction: float
    epochs: int
    run_id: str
    val_accuracy: float | None = None

    @property
    def point(self) -> tuple[float, float, float]:
        return self.lam, self.t, self.flops_reduction


def outcome_key(config: dict[str, Any]) -> dict[str, str]:
    """The Config fields, as MLflow params record them, that decide a trial's F (data_dir: the
    dataset's folder, resolved, when the dataset is read from one)."""
    key = {name: str(value) for name, value in config.items() if name not in NOT_OUTCOME}
    folder = config.get("data_dir")
    key["data_dir"] = str(Path(folder).expanduser().resolve()) if folder not in (None, "None", "") else "None"
    return key


def earlier_trials(client: Any, experiment_id: str, config: Any, exclude: str | None = None) -> list[EarlierTrial]:
    """The reusable trials of every search in `experiment_id` (but `exclude`, a parent run id) whose
    trainer config decides F as `config` does, oldest search first."""
    from search.tracking import KIND

    want = outcome_key(config.to_dict())
    parents = client.search_runs([experiment_id], filter_string=f"tags.`{KIND}` = 'search'",
                                 max_results=10000, order_by=["attributes.start_time ASC"])  # fmt: skip
    found = []
    for parent in parents:
        params = parent.data.params
        if parent.info.run_id == exclude or not want.keys() <= params.keys():
            continue
        if outcome_key({k: params[k] for k in want}) != want:
            continue
        query = f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`{KIND}` = 'trial'"
        for run in client.search_runs([experiment_id], filter_string=query, max_results=10000):
            f = run.data.metrics.get("flops_reduction")
            if run.data.tags.get("status") in REUSABLE and f is not None and run.data.tags.get("decided") is None:
                found.append(EarlierTrial(float(run.data.params["lam"]), float(run.data.params["t"]), float(f),
                                          int(run.data.metrics.get("epochs", 0)), run.info.run_id,
                                          run.data.metrics.get("val_accuracy")))  # fmt: skip
    return found
