"""The figures a search leaves in MLflow, drawn with matplotlib (Agg: no display needed).

    per trial   F per epoch against the target band F* ± δ; the γ histogram of each epoch with its
                threshold (§3.3), logged as an image per step so MLflow's UI steps through them
    per search  F of every trial against the band (the search's history); the path over (λ, t)
    per final   the channels kept per layer of the pruned network

Each function takes plain numbers and returns a matplotlib Figure; the caller logs and closes it.
Nothing here knows about MLflow or Ray, so a notebook can draw the same figures from result.json.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a server; the figures only ever go to files
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
from matplotlib.figure import Figure  # noqa: E402

BAND = "#2ca02c"
MARKERS = {"stable": "o", "max_epochs": "s", "decided": "D", "failed": "x"}


def _band(ax: Any, target: float, delta: float) -> None:
    """The target F* as a line and F* ± δ as a shaded band: a hit is inside it."""
    ax.axhspan(target - delta, target + delta, color=BAND, alpha=0.15, label=f"F* ± δ = {target:g} ± {delta:g}")
    ax.axhline(target, color=BAND, lw=1.2, ls="--")


def flops_per_epoch(history: Sequence[float], target: float, delta: float, title: str = "") -> Figure:
    """A trial's F after every epoch (1-based) against the band: where it settles and how fast."""
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=90)
    epochs = list(range(1, len(history) + 1))
    _band(ax, target, delta)
    ax.plot(epochs, history, marker="o", ms=3, color="#1f77b4", label="F per epoch")
    ax.set(xlabel="epoch", ylabel="FLOPs reduction F", ylim=(0, 1), title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def gamma_histogram(counts: Sequence[int], upper: float, threshold: float | None, title: str = "") -> Figure:
    """The histogram of |γ| of one epoch, the threshold at its first valley marked (§3.3)."""
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=90)
    width = upper / max(1, len(counts))
    ax.bar([i * width for i in range(len(counts))], counts, width=width, align="edge", color="#7f7f7f")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="#d62728", lw=1.5, label=f"threshold {threshold:.3f}")
        ax.legend(loc="upper right", fontsize=7)
    ax.set(xlabel="|γ|", ylabel="channels", xlim=(0, upper), title=title)
    ax.set_yscale("symlog", linthresh=10)  # the spike at 0 would flatten everything else
    fig.tight_layout()
    return fig


def search_history(trials: Sequence[dict[str, Any]], target: float, delta: float, title: str = "") -> Figure:
    """F of every trial in order (x = trial number) against the band, the winner starred: the
    search's history, as Optuna's history plot draws a study's."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=90)
    _band(ax, target, delta)
    for status, marker in MARKERS.items():
        points = [(tr["number"], tr["flops_reduction"]) for tr in trials
                  if tr.get("status") == status and _finite(tr.get("flops_reduction"))]  # fmt: skip
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, s=28, label=status, zorder=3)
    winner = [tr for tr in trials if tr.get("winner") and _finite(tr.get("flops_reduction"))]
    if winner:
        ax.scatter([winner[0]["number"]], [winner[0]["flops_reduction"]], marker="*", s=220, color="gold",
                   edgecolors="black", zorder=4, label="winner")  # fmt: skip
    ax.set(xlabel="trial", ylabel="FLOPs reduction F", ylim=(0, 1), title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def search_path(trials: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """The (λ, t) the search tried, in order, each point coloured by its F and labelled by its number."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=90)
    lams = [tr["lam"] for tr in trials]
    ts = [tr["t"] for tr in trials]
    ax.plot(lams, ts, color="#bbbbbb", lw=1, zorder=1)
    values = [tr["flops_reduction"] if _finite(tr.get("flops_reduction")) else math.nan for tr in trials]
    points = ax.scatter(lams, ts, c=values, cmap="viridis", vmin=0, vmax=1, s=40, zorder=2)
    for tr in trials:
        ax.annotate(f"#{tr['number']}", (tr["lam"], tr["t"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if all(lam > 0 for lam in lams):
        ax.set_xscale("log")
    fig.colorbar(points, ax=ax, label="F")
    ax.set(xlabel="λ", ylabel="t", title=title)
    fig.tight_layout()
    return fig


def kept_channels(layers: Sequence[tuple[str, int, int]], title: str = "") -> Figure:
    """Channels per prunable layer before and after pruning, (name, before, after) in graph order."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.18 * len(layers) + 1.5), 3.4), dpi=90)
    index = list(range(len(layers)))
    ax.bar(index, [before for _, before, _ in layers], color="#dddddd", label="before")
    ax.bar(index, [after for _, _, after in layers], color="#1f77b4", label="kept")
    ax.set_xticks(index, [name for name, _, _ in layers], rotation=90, fontsize=5)
    ax.set(ylabel="channels", title=title)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))
