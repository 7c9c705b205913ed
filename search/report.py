"""What a search prints: a line per finished trial while it runs, and the table at its end.

`trial_handlers` are the driver's handlers of Tune's trial results (`search.tune.TrialEvents`): each
epoch and each trial's end logged to MLflow, and one line printed per finished trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def trial_handlers(mlflow_uri: str, experiment: str, parent_run_id: str) -> tuple[Callable, Callable]:
    """(on_epoch, on_end) for `TrialEvents`: MLflow runs under the parent run, a line per finished trial."""
    from search.tracking import SearchTracker

    tracker = SearchTracker(mlflow_uri, experiment)
    tracker.attach(parent_run_id)  # and the trial runs of an interrupted session, on --resume
    done = 0

    def on_end(trial_id: str, result: dict[str, Any]) -> None:
        nonlocal done
        tracker.end_trial(trial_id, result)
        done += 1
        print(f"trial {done}: {trial_line(result)}", flush=True)

    return tracker.log_epoch, on_end


def trial_line(result: dict[str, Any]) -> str:
    """λ, t, F, status, epochs and accuracy of a trial's last report, on one line."""
    f = result.get("flops_reduction")
    flops = "failed" if f is None or not math.isfinite(f) else f"F={f:.3f}"
    return (f"lam={result['lam']:.6g} t={result['t']:.4g} -> {flops} ({result.get('status')}, "
            f"{result.get('epoch')} epochs, acc {fmt(result.get('val_accuracy'), '.3f')})")


def summary(outcome: Any, target: float, delta: float) -> str:
    """The end-of-search table: trials, winner, stop reason, final model."""
    lines = ["", f"{'#':>3}  {'lam':>10}  {'t':>6}  {'F':>6}  {'epochs':>6}  {'accuracy':>8}  status"]
    for i, row in enumerate(outcome.trials, 1):
        lines.append(f"{i:>3}  {row.lam:>10.4g}  {row.t:>6.3g}  {fmt(row.flops_reduction, '6.3f')}  "
                     f"{fmt(row.epochs, '6.0f')}  {fmt(row.val_accuracy, '8.3f')}  {row.status}")
    best = outcome.best
    if best is None:
        lines.append("winner: none (no trial succeeded)")
    else:
        gap = abs(best.flops_reduction - target)
        inside = "inside" if gap <= delta else "outside"
        lines.append(f"winner: lam={best.lam:.6g} t={best.t:.4g} F={best.flops_reduction:.3f} "
                     f"(|F-F*|={gap:.3f}, {inside} δ={delta})")
    lines.append(f"stop reason: {outcome.reason}")
    if outcome.final is not None:
        lines.extend(final_lines(outcome.final))
    lines.extend(outcome.notes)
    lines.append(f"search took {outcome.seconds:.0f} s; results in {outcome.output}")
    return "\n".join(lines)


def final_lines(final: Any) -> list[str]:
    """Accuracy, FLOPs, params and where the model is, of a trainers.final.FinalResult."""
    return [
        f"final model: accuracy {final.acc_after_finetune:.3f} (before pruning {final.acc_before_pruning:.3f}, "
        f"after pruning {final.acc_after_pruning:.3f}); FLOPs {final.flops_before:,} -> {final.flops_after:,} "
        f"(F={final.flops_reduction:.3f}); params {final.params_before:,} -> {final.params_after:,}",
        f"final model saved at {final.model_path}",
    ]


def fmt(value: Any, spec: str = "6.3f") -> str:
    """`value` formatted by `spec`, or "-" (right-aligned to its width) when it is missing or not finite."""
    width = int(spec.split(".")[0] or 0)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'-':>{width}}"
    return f"{value:{spec}}"
