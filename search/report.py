"""What a search prints: a line per epoch of every trial while it runs, and the table at its end.

`trial_handlers` are the driver's handlers of Tune's trial results (`search.tune.TrialEvents`): each
epoch and each trial's end logged to MLflow, one line per epoch (rewritten in place on a terminal,
plain lines in a log) and one per finished trial. For the optuna strategy the epochs also go to the
study as intermediate values, so Optuna Dashboard draws them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, TextIO


def trial_handlers(mlflow_uri: str, experiment: str, parent_run_id: str,
                   optuna: dict[str, str] | None = None, out: TextIO | None = None) -> tuple[Callable, Callable]:  # fmt: skip
    """(on_epoch, on_end) for `TrialEvents`: MLflow runs under the parent run, and the console lines.

    `optuna` (storage, study_name) names the optuna strategy's study, told each epoch's |F − F*|."""
    from search.tracking import SearchTracker

    tracker = SearchTracker(mlflow_uri, experiment)
    tracker.attach(parent_run_id)  # and the trial runs of an interrupted session, on --resume
    target = tracker.target
    line = Progress(out or sys.stdout)
    study = None if optuna is None else _study(optuna)
    done = 0

    def on_epoch(trial_id: str, result: dict[str, Any]) -> None:
        tracker.log_epoch(trial_id, result)
        line.update(epoch_line(result, target, target.max_epochs if target is not None else None))
        if study is not None and target is not None:
            from search.strategies.optuna_search import report_epoch

            report_epoch(study, int(result.get("trial") or 0) - 1, int(result["epoch"]),
                         target.gap(result.get("flops_reduction")))  # fmt: skip

    def on_end(trial_id: str, result: dict[str, Any]) -> None:
        nonlocal done
        tracker.end_trial(trial_id, result)
        done += 1
        line.done(f"trial {result.get('trial') or done}: {trial_line(result)}")

    return on_epoch, on_end


class Progress:
    """One line that a terminal rewrites in place (\r, erase line); a file or pipe gets every line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self._open = False

    def update(self, text: str) -> None:
        if self.tty:
            self.out.write(f"\r\033[K{text}")
            self._open = True
        else:
            self.out.write(f"{text}\n")
        self.out.flush()

    def done(self, text: str) -> None:
        erase = "\r\033[K" if self._open else ""
        self.out.write(f"{erase}{text}\n")
        self._open = False
        self.out.flush()


def epoch_line(result: dict[str, Any], target: Any = None, max_epochs: int | None = None) -> str:
    """`trial 2 epoch 5/30 F=0.400 (F*=0.5±0.05, |F−F*|=0.100) acc 0.430, 6 s/epoch, ≤2 min left`."""
    epoch, flops, seconds = int(result["epoch"]), result.get("flops_reduction"), result.get("seconds")
    text = f"trial {result.get('trial', '?')} epoch {epoch}{f'/{max_epochs}' if max_epochs else ''} F={fmt(flops, '.3f')}"
    if target is not None:
        text += f" ({target.band()}, |F−F*|={fmt(target.gap(flops), '.3f')})"
    text += f" acc {fmt(result.get('val_accuracy'), '.3f')}, {fmt(seconds, '.0f')} s/epoch"
    if max_epochs and seconds is not None and math.isfinite(seconds) and epoch < max_epochs:
        text += f", ≤{_duration((max_epochs - epoch) * seconds)} left"  # at most: the trial may stop once F is stable
    return text


def trial_line(result: dict[str, Any]) -> str:
    """λ, t, F, status, epochs and accuracy of a trial's last report, on one line."""
    f = result.get("flops_reduction")
    flops = "failed" if f is None or not math.isfinite(f) else f"F={f:.3f}"
    return (f"lam={result['lam']:.6g} t={result['t']:.4g} -> {flops} ({result.get('status')}, "
            f"{result.get('epoch')} epochs, acc {fmt(result.get('val_accuracy'), '.3f')})")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _study(optuna: dict[str, str]) -> Any:
    import optuna as _optuna

    return _optuna.load_study(study_name=optuna["study_name"], storage=optuna["storage"])


def summary(outcome: Any, target: float, delta: float) -> str:
    """The end-of-search table: trials, winner, stop reason, final model."""
    lines = ["", f"{'#':>3}  {'lam':>10}  {'t':>6}  {'F':>6}  {'epochs':>6}  {'accuracy':>8}  status"]
    for i, row in enumerate(outcome.trials, 1):
        lines.append(f"{i:>3}  {row.lam:>10.4g}  {row.t:>6.3g}  {fmt(row.flops_reduction, '6.3f')}  "
                     f"{fmt(row.epochs, '6.0f')}  {fmt(row.val_accuracy, '8.3f')}  {row.status}")
    best = outcome.best
    if best is None and getattr(outcome, "interrupted", False):
        lines.append("winner: none yet (interrupted)")
    elif best is None:
        lines.append("winner: none (no trial ended with a stable F: each failed or was decided early)")
        lines.append(f"verdict: no result for F*={target} ± {delta}")
    else:
        gap = abs(best.flops_reduction - target)
        inside = "inside" if gap <= delta else "outside"
        lines.append(f"winner: lam={best.lam:.6g} t={best.t:.4g} F={best.flops_reduction:.3f} "
                     f"(|F-F*|={gap:.3f}, {inside} δ={delta})")
        lines.append("verdict: hit" if gap <= delta else f"verdict: MISSED the target F*={target} ± {delta}")
    lines.append(f"stop reason: {outcome.reason}")
    lines.append(cost_line(outcome.trials))
    if outcome.final is not None:
        lines.extend(final_lines(outcome.final))
    lines.extend(outcome.notes)
    lines.append(f"search took {outcome.seconds:.0f} s; results in {outcome.output}")
    return "\n".join(lines)


def cost_line(rows: list[Any]) -> str:
    """`cost: 2 trials, 53 trial-epochs trained (3 trials of earlier searches reused: 78 trial-epochs
    not trained again)`: what the search paid, from its table's rows."""
    trained = [row for row in rows if row.status != "earlier"]
    reused = [row for row in rows if row.status == "earlier"]
    line = f"cost: {_count(len(trained), 'trial')}, {sum(row.epochs or 0 for row in trained)} trial-epochs trained"
    if reused:
        line += (f" ({_count(len(reused), 'trial')} of earlier searches reused: {sum(row.epochs or 0 for row in reused)} "
                 "trial-epochs not trained again)")  # fmt: skip
    return line


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def final_lines(final: Any) -> list[str]:
    """Accuracy, FLOPs, params and where the model is, of a trainers.final.FinalResult."""
    return [
        f"final model: accuracy {final.acc_after_finetune:.3f} (before pruning {final.acc_before_pruning:.3f}, "
        f"after pruning {final.acc_after_pruning:.3f}); FLOPs {final.flops_before:,} -> {final.flops_after:,} "
        f"(F={final.flops_reduction:.3f}); params {final.params_before:,} -> {final.params_after:,}",
        *speed_lines(final),
        f"final model saved at {final.model_path}",
    ]


def speed_lines(final: Any) -> list[str]:
    """`measured speed-up 1.52x at batch 1, 1.71x at batch 1000 (FLOPs promise 2.09x = 1/(1 − F))`:
    what the pruned model gained in time next to what its FLOPs say, when the job timed it."""
    if not final.speedup:
        return []
    measured = ", ".join(f"{s:.2f}x at batch {b} ({final.latency_ms_before[b]:.3g} -> {final.latency_ms_after[b]:.3g} ms)"
                         for b, s in sorted(final.speedup.items()))  # fmt: skip
    lines = [f"measured speed-up {measured}; FLOPs promise {final.ideal_speedup:.2f}x = 1/(1 − F)"]
    slower = [f"{s:.2f}x at batch {b}" for b, s in sorted(final.speedup.items()) if s < 1]
    if slower:  # measured on CPU at F ≈ 0.1 (docs/speed.md): say so rather than let a user find out
        lines.append(f"warning: the pruned model is slower than the dense one here ({', '.join(slower)}): "
                     f"at F={final.flops_reduction:.2f} its narrower layers save no time on this machine "
                     f"(docs/speed.md: where the time goes)")  # fmt: skip
    return lines


def fmt(value: Any, spec: str = "6.3f") -> str:
    """`value` formatted by `spec`, or "-" (right-aligned to its width) when it is missing or not finite."""
    width = int(spec.split(".")[0] or 0)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'-':>{width}}"
    return f"{value:{spec}}"
