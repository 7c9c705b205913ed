"""A trial of the search as a Ray Tune trainable: `trainers.trial.run_trial` at the proposal's
(λ, t), reporting every epoch through `tune.report` with a checkpoint, so a killed trial resumes from
its last epoch; its last report carries the stable F (or the early decision) and its status.

Each report also names the Ray node it ran on (`node_id`), which the tracker tags the trial's MLflow
run with. A trial with more than one worker is a Ray Train run (`search.train_workers`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune

RUNNING = "running"
"""The `status` of a trial's per-epoch reports; its last report has run_trial's final status."""


def trial_trainable(config: Any) -> Callable:
    """The Tune trainable of a search whose trials all share `config` (trainers.config.Config).

    A class over Tune's function wrapper whose repr is the trial's name: Ray shows an actor's repr
    in its dashboard (and prefixes its log lines with it), so each trial reads "#3 λ=… t=…" there
    rather than an anonymous `ImplicitFunc`."""
    from ray.tune.trainable.function_trainable import wrap_function

    implicit = wrap_function(tune.with_parameters(polarized_trial, base=config))

    class PolarizedTrial(implicit):  # type: ignore[misc, valid-type]
        def __repr__(self) -> str:
            info = getattr(self, "_trial_info", None)
            return info.trial_name if info is not None else "polarized_trial"

    return PolarizedTrial


def trial_name(trial: Any) -> str:
    """Tune's name of a trial (Ray dashboard, Tune's folders): its number, λ and t, as MLflow names it."""
    from search.views import trial_name as name

    config = trial.config
    return name(int(config.get("proposal", 0)) + 1, float(config["lam"]), float(config["t"]))


def trial_dirname(trial: Any) -> str:
    """The trial's folder under ray/tune/: its number, λ and t, in characters any file system takes."""
    config = trial.config
    return f"trial_{int(config.get('proposal', 0)) + 1}_lam{float(config['lam']):.1e}_t{float(config['t']):.3g}"


def polarized_trial(params: dict[str, Any], base: Any) -> None:
    """Tune function trainable: one short polarized run at (lam, t), `base` being the Config."""
    if base.workers_per_trial > 1:  # data-parallel: this trial drives Ray Train workers
        from search.train_workers import fit_trial

        return fit_trial(params, base)
    from search.report import epoch_line
    from trainers.trial import run_trial

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # a line per checkpoint is noise beside Tune's table
    lam, t = float(params["lam"]), float(params["t"])
    work = Path(tempfile.mkdtemp(prefix="polarsearch-trial-"))
    try:
        restored = tune.get_checkpoint()
        if restored is not None:  # a killed trial resumes from its last epoch (trial.pt)
            with restored.as_directory() as folder:
                shutil.copytree(folder, work, dirs_exist_ok=True)

        number = int(params.get("proposal", 0)) + 1

        node = ray.get_runtime_context().get_node_id()  # which machine of the cluster trained it

        def report(metrics: dict[str, Any]) -> None:
            row = epoch_metrics(metrics, lam, t)
            # for the console line and MLflow's views: the trial's number, s/epoch, the γ histogram
            row.update(trial=number, node_id=node, seconds=_number(metrics.get("seconds")),
                       gamma_histogram=gamma_counts(work, base.bin_width, base.gamma_upper))
            print(epoch_line(row, max_epochs=base.max_epochs), flush=True)  # the actor's log, in Ray's dashboard
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(work))

        window = params.get("window")
        decide = None if window is None else decider(tuple(window), base.max_epochs)
        try:
            result = run_trial(base, lam, t, report=report, checkpoint_dir=work, decide=decide)
        except OSError as error:  # a full disk, an I/O error: the trial fails with the reason, once
            tune.report({**io_failure(error, lam, t), "trial": number, "node_id": node})
            return
        print(f"trial {number} ended: {result.status}, F={result.flops_reduction:.3f} {result.message}", flush=True)
        tune.report({**final_metrics(result, lam, t), "trial": number, "node_id": node})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def epoch_metrics(metrics: dict[str, Any], lam: float, t: float) -> dict[str, Any]:
    """One epoch's report, in the column order of Tune's table."""
    from trainers.trial import REPORTED

    row: dict[str, Any] = {"lam": lam, "t": t}
    row.update({key: _number(metrics.get(key)) for key in REPORTED})
    row["epoch"] = int(metrics["epoch"])
    row["status"] = RUNNING
    return row


def gamma_counts(work: Path, bin_width: float, upper: float) -> list[int] | None:
    """The histogram of |γ| (pruning.threshold.histogram) of the BNs in the epoch's checkpoint
    (every BN: its weight beside a running mean), or None when there is none to read."""
    import torch

    from pruning.threshold import histogram
    from trainers.trial import CHECKPOINT

    try:
        state = torch.load(work / CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    except (OSError, KeyError, RuntimeError):
        return None
    gammas = [v.reshape(-1) for k, v in state.items()
              if k.endswith(".weight") and f"{k[:-len('weight')]}running_mean" in state]  # fmt: skip
    return histogram(torch.cat(gammas), bin_width, upper).tolist() if gammas else None


def decider(window: tuple[float, float], max_epochs: int) -> Callable:
    """The `decide` of run_trial for a strategy asking about `window` (search.strategies.early)."""
    from search.strategies.early import decide

    def decide_trial(history: list[dict[str, Any]]) -> dict[str, Any] | None:
        decision = decide(window, [h["flops_reduction"] for h in history], max_epochs)
        if decision is None:
            return None
        return {**dataclasses.asdict(decision), "window": list(window)}

    return decide_trial


def final_metrics(result: Any, lam: float, t: float) -> dict[str, Any]:
    """The last report of a trial: its stable F (NaN if it failed), status, epochs and message; for a
    trial decided early, F where it stopped, the side, and the forecast of its stable F."""
    last_loss = result.history[-1].get("loss") if result.history else None
    row = {"lam": lam, "t": t, "epoch": int(result.epochs), "flops_reduction": _number(result.flops_reduction),
           "val_accuracy": _number(result.val_accuracy), "threshold": _number(result.threshold),
           "loss": _number(last_loss), "status": str(result.status), "message": str(result.message or "")}
    decision = result.decision
    if decision is not None:
        low, high = decision["window"]
        row.update(decided=decision["side"], forecast=decision["forecast"], message=(
            f"decided {decision['side']} [{low:.3f}, {high:.3f}] at epoch {decision['epoch']}: F={decision['flops_reduction']:.3f}, "
            f"stable F within [{decision['low']:.3f}, {decision['high']:.3f}]"))
    return row


def io_failure(error: OSError, lam: float, t: float) -> dict[str, Any]:
    """The last report of a trial stopped by an OSError: failed, the reason in `message` and `io_error`
    (the driver ends the search on a full disk or a failing file system rather than try the next trial)."""
    where = f" ({error.filename})" if getattr(error, "filename", None) else ""
    reason = f"{type(error).__name__}: [Errno {error.errno}] {error.strerror or error}{where}"
    return {"lam": lam, "t": t, "epoch": 0, "flops_reduction": math.nan, "val_accuracy": math.nan,
            "threshold": math.nan, "loss": math.nan, "status": "failed", "message": reason,
            "io_error": reason, "errno": error.errno or 0}  # fmt: skip


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)
