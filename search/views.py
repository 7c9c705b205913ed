"""What a person sees of a search in MLflow's UI: names, description, verdict, history and figures.

`search.tracking.SearchTracker` writes the runs; this module decides how they read at a glance:

    experiment   tag mlflow.experimentKind = custom_model_development: MLflow 3 opens it on the
                 training runs, not on an empty GenAI overview
    parent run   description (mlflow.note.content) with the verdict; tag polarsearch.verdict =
                 hit | missed | no_result; history metrics search/F, search/lam, search/t,
                 search/gap (|F − F*|) with step = trial number, which MLflow's charts draw like
                 Optuna's history plot; figures search_history.png and search_path.png
    trial run    named "#3 λ=5e-04 t=0.9 F=0.34"; metrics target_flops and flops_gap; figures
                 flops_per_epoch.png and the γ histogram of each epoch (an image per step)
    final run    figure kept_channels.png

The target and δ come from the parent run's params, so every tracker of a search (the driver's
and the trial handlers') reads the same numbers without being handed them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from search import plots

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
NOTE = "mlflow.note.content"  # the run's description in MLflow's UI
VERDICT = "polarsearch.verdict"  # hit | missed | no_result
WINNER = "polarsearch.winner"  # "true" on the winning trial's run
NUMBER = "polarsearch.trial"  # the trial's number, 1-based, as in the console and `compare`
HISTORY = ("search/F", "search/lam", "search/t", "search/gap")


@dataclass(frozen=True)
class Target:
    """F* and δ of a search, with what the trial views need from its Config."""

    target: float
    delta: float
    max_epochs: int | None = None
    gamma_upper: float = 1.0

    @classmethod
    def of_run(cls, client: MlflowClient, parent_id: str) -> Target | None:
        """The target of the search whose parent run is `parent_id` (None if its params lack it)."""
        params = client.get_run(parent_id).data.params
        if "target" not in params:
            return None
        epochs = params.get("max_epochs")
        return cls(float(params["target"]), float(params.get("delta", "nan")),
                   int(epochs) if epochs and epochs.isdigit() else None, float(params.get("gamma_upper", 1.0)))  # fmt: skip

    def gap(self, flops: float | None) -> float:
        return math.nan if flops is None else abs(float(flops) - self.target)

    def band(self) -> str:
        return f"F*={self.target:g}±{self.delta:g}"


def trial_name(number: int, lam: float, t: float, flops: float | None = None, status: str = "") -> str:
    """`#3 λ=5e-4 t=0.9 F=0.340`: the three numbers a trial is known by, short enough for the runs
    table's name column."""
    name = f"#{number} {point(lam, t)}"
    if status == "failed" or (flops is not None and not math.isfinite(flops)):
        return f"{name} failed"
    if flops is not None:
        name += f" F={flops:.3f}"
    return f"{name} (decided)" if status == "decided" else name


def final_name(lam: float, t: float, final: Any) -> str:
    """`final λ=3.8e-4 t=1.2 F=0.283 acc 0.621`: the final job's run, read in the table like a trial's."""
    return f"final {point(lam, t)} F={final.flops_reduction:.3f} acc {final.acc_after_finetune:.3f}"


def point(lam: float, t: float) -> str:
    """`λ=5e-4 t=0.9`: a (λ, t) as run names write it."""
    return f"λ={short_float(lam)} t={t:.3g}"


def short_float(value: float) -> str:
    """λ in as few characters as it needs: 5e-4, 2.5e-3, 0.02 (two significant digits)."""
    if value == 0 or 1e-2 <= abs(value) < 1e3:
        return f"{value:.2g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def verdict(best: Any | None, target: Target | None, reason: str, status: str,
            statuses: list[str] | None = None) -> tuple[str, str]:  # fmt: skip
    """(verdict, description): hit when the winner's F is within δ of F*, else missed (no_result
    when no trial can win: all failed or decided early, which only bound F). The description is
    the Markdown MLflow shows on the run page; `statuses` are the trials' (to say why no result)."""
    if best is None or target is None:
        counts = ", ".join(f"{(statuses or []).count(s)} {s}" for s in sorted(set(statuses or [])))
        return "no_result", (f"**No result**: no trial ended with a stable F ({counts or 'no trials'}).\n\n"
                             f"Stop reason: {reason or '-'} ({status}).")  # fmt: skip
    gap = target.gap(best.flops_reduction)
    hit = gap <= target.delta + 1e-12
    head = "**Hit**" if hit else "**Missed the target**"
    return ("hit" if hit else "missed",
            f"{head}: F={best.flops_reduction:.3f} at λ={best.lam:.3g}, t={best.t:.3g}; |F − F\\*| = {gap:.3f} "
            f"({'within' if hit else 'outside'} δ={target.delta:g} of F\\*={target.target:g}).\n\n"
            f"Stop reason: {reason or '-'} ({status}).")  # fmt: skip


def history_metrics(number: int, lam: float, t: float, flops: float, target: Target | None) -> list[Metric]:
    """The parent run's history at step = trial number: F, λ, t and |F − F*| of that trial."""
    now = int(time.time() * 1000)
    values = [flops, lam, t, target.gap(flops) if target is not None else math.nan]
    return [Metric(key, float(v), now, number) for key, v in zip(HISTORY, values, strict=True) if math.isfinite(v)]


def log_epoch_views(client: MlflowClient, run_id: str, result: dict[str, Any], target: Target | None) -> list[Metric]:
    """The γ histogram of this epoch as an image at step = epoch; returns |F − F*| to log with the epoch."""
    step = int(result["epoch"])
    counts = result.get("gamma_histogram")
    if counts:
        threshold = result.get("threshold")
        fig = plots.gamma_histogram(counts, target.gamma_upper if target else 1.0, threshold,
                                    title=f"γ histogram, epoch {step}")  # fmt: skip
        try:
            client.log_image(run_id, _image(fig), key="gamma_histogram", step=step)
        finally:
            plots.close(fig)
    if target is None or result.get("flops_reduction") is None or not math.isfinite(result["flops_reduction"]):
        return []
    return [Metric("flops_gap", target.gap(result["flops_reduction"]), int(time.time() * 1000), step)]


def log_trial_views(client: MlflowClient, run_id: str, number: int, result: dict[str, Any],
                    target: Target | None) -> None:  # fmt: skip
    """At a trial's end: its name with F, target and gap metrics, and F per epoch against the band."""
    flops, status = result.get("flops_reduction"), str(result.get("status", ""))
    client.update_run(run_id, name=trial_name(number, result["lam"], result["t"], flops, status))
    history = [m.value for m in sorted(client.get_metric_history(run_id, "flops_reduction"), key=lambda m: m.step)
               if m.step >= 1]  # fmt: skip
    if target is None:
        return
    metrics = [Metric("target_flops", target.target, int(time.time() * 1000), 0)]
    if flops is not None and math.isfinite(flops):
        metrics.append(Metric("flops_gap_final", target.gap(flops), int(time.time() * 1000), 0))
    client.log_batch(run_id, metrics=metrics)
    if history:
        fig = plots.flops_per_epoch(history, target.target, target.delta, title=trial_name(number, result["lam"], result["t"], flops, status))
        try:
            client.log_figure(run_id, fig, "flops_per_epoch.png")
        finally:
            plots.close(fig)


def log_search_views(client: MlflowClient, parent_id: str, trials: list[dict[str, Any]], best: Any | None,
                     target: Target | None, reason: str, status: str) -> str:  # fmt: skip
    """The verdict (tag and description), the winner's tag and the search's figures; returns the verdict."""
    kind, note = verdict(best, target, reason, status, [str(tr.get("status")) for tr in trials])
    winner = None
    if best is not None:
        close = [tr for tr in trials if math.isclose(tr["lam"], best.lam, rel_tol=1e-9) and math.isclose(tr["t"], best.t)]
        winner = close[0] if close else None
    for tr in trials:
        tr["winner"] = tr is winner
    if winner is not None:
        client.set_tag(winner["run_id"], WINNER, "true")
        note += f"\n\nWinner: trial #{winner['number']} ({winner['name']})."
    elif getattr(best, "known", False):  # recalled (search.earlier): its run is under the earlier search
        note += (f"\n\nWinner: a trial an earlier search of the same config trained (its run is in the tag "
                 f"`polarsearch.earlier_runs`); this search trained {len(trials)} trial(s).")  # fmt: skip
    client.log_batch(parent_id, tags=[RunTag(VERDICT, kind), RunTag(NOTE, note)])
    if target is not None and trials:
        for name, fig in (("search_history.png", plots.search_history(trials, target.target, target.delta, title=target.band())),
                          ("search_path.png", plots.search_path(trials, title="(λ, t) tried, in order"))):  # fmt: skip
            try:
                client.log_figure(parent_id, fig, name)
            finally:
                plots.close(fig)
    return kind


def log_final_views(client: MlflowClient, run_id: str, final: Any, model_name: str | None) -> None:
    """Kept channels per prunable layer of the final model, beside the original network's."""
    layers = kept_channels(final.pruned_model, model_name)
    if not layers:
        return
    fig = plots.kept_channels(layers, title=f"channels kept: F={final.flops_reduction:.3f}")
    try:
        client.log_figure(run_id, fig, "kept_channels.png")
    finally:
        plots.close(fig)


def kept_channels(pruned: Any, model_name: str | None) -> list[tuple[str, int, int]]:
    """(BN name, channels before, channels kept) per BN of the pruned model, the original rebuilt by name."""
    from torch import nn

    after = {name: m.num_features for name, m in pruned.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    before = dict(after)
    linears = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    if model_name and linears:
        try:
            from trainers import models

            original = models.build(model_name, linears[-1].out_features)
            before = {name: m.num_features for name, m in original.named_modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)}  # fmt: skip
        except Exception:  # noqa: BLE001 - an unknown or resized model: the kept counts alone
            before = dict(after)
    return [(name, before.get(name, kept), kept) for name, kept in after.items()]


def _image(fig: Any) -> Any:
    """A figure as a PIL image (what `MlflowClient.log_image` steps through per epoch)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
