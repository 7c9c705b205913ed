"""Deciding a trial early (issue 13): stop training once its F is known to land on one side of the
window the strategy asks about.

A strategy needs from a trial only the side of a window on which its stable F lands (Algorithm 1's
λ phase: the 2δ window, its t phase: the δ window; a trial inside the δ window is the answer). F
rises with the epochs almost monotonically, and how much it still moves after epoch k is bounded
by what recorded trajectories did: `RiseBounds` holds, per fraction k / max_epochs of a trial's
budget, the least and the most F_final − F_k seen, widened by the seed-to-seed noise. When
[F_k + least, F_k + most] lies wholly above or below the window, the side is decided:

    decision = decide((0.4, 0.6), f_per_epoch, max_epochs=30)      # None, or Decision("above", ...)

The default bounds (`CPU_QUICK`) were measured on the recorded `cpu-quick` trajectories of
experiments/results/px16*.json (`python bench/bench_search_cost.py --bounds` recomputes them); for another
preset they are applied by fraction of its epoch budget, an assumption stated in the README.
Pure Python: no torch, no Ray.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

ABOVE, BELOW = "above", "below"
Window = tuple[float, float]


@dataclass(frozen=True)
class RiseBounds:
    """F_final − F_k over recorded trials, per fraction k/max_epochs: least, median and most."""

    fractions: tuple[float, ...]  # increasing, in (0, 1]
    least: tuple[float, ...]
    median: tuple[float, ...]
    most: tuple[float, ...]
    margin: float  # added on both sides: the seed-to-seed spread of the stable F

    @classmethod
    def measure(cls, trajectories: Sequence[Sequence[float]], max_epochs: int, margin: float,
                min_count: int = 5) -> RiseBounds:  # fmt: skip
        """The bounds of recorded per-epoch F trajectories (each ending at its trial's stable F), at the
        epochs at least `min_count` of them reached."""
        rows = []
        for k in range(1, max_epochs + 1):
            rises = [traj[-1] - traj[k - 1] for traj in trajectories if len(traj) >= k]
            if len(rises) >= min_count:
                rows.append((k / max_epochs, min(rises), statistics.median(rises), max(rises)))
        fractions, least, median, most = (list(col) for col in zip(*rows, strict=True))
        # Envelopes from the end: what F did after a later epoch it may do after an earlier one too
        # (px16, λ 2e-3, t 0.8: 0.60 at epoch 3, 0.64 stable, when all others rose >= 0.12 after it).
        for i in range(len(rows) - 2, -1, -1):
            least[i], most[i] = min(least[i], least[i + 1]), max(most[i], most[i + 1])
        return cls(*(tuple(round(v, 4) for v in col) for col in (fractions, least, median, most)), margin)

    def interval(self, f_now: float, epoch: int, max_epochs: int) -> tuple[float, float, float]:
        """(low, forecast, high) of the stable F of a trial at F = f_now after `epoch` epochs.

        Between recorded fractions the earlier one is used (wider bounds); before the first, none:
        the interval is everything."""
        i = bisect.bisect_right(self.fractions, epoch / max_epochs + 1e-9) - 1
        if i < 0:
            return -float("inf"), f_now, float("inf")
        return (f_now + self.least[i] - self.margin, f_now + self.median[i],
                f_now + self.most[i] + self.margin)  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """A trial decided early: the side of the window, when, the F it stopped at, the forecast of its stable F."""

    side: str  # ABOVE or BELOW
    epoch: int
    flops_reduction: float
    forecast: float
    low: float
    high: float


# Measured: `python bench/bench_search_cost.py --bounds` on experiments/results/px16.json and px16-surface.json
# (55 cpu-quick trials with λ > 0, 30-epoch budget: px16's 19 and the whole 36-point surface). margin 0.07 ≈ 3 σ
# of the seed-to-seed spread of the stable F (σ = 0.022 on the 55; 0.014 on the 46 it was chosen on): the
# smallest margin with no wrong decision when each trajectory is left out of the bounds it is judged by
# (0.042 on 19 trials, 0.05 on 31 made wrong ones as the surface grew; 0.07 still makes none on 55).
CPU_QUICK = RiseBounds(
    fractions=(0.0333, 0.0667, 0.1, 0.1333, 0.1667, 0.2, 0.2333, 0.2667, 0.3, 0.3333, 0.3667, 0.4, 0.4333,
               0.4667, 0.5, 0.5333, 0.5667, 0.6, 0.6333, 0.6667, 0.7, 0.7333, 0.7667, 0.8, 0.8333, 0.8667,
               0.9, 0.9333, 0.9667, 1.0),
    least=(-0.0425, -0.0425, -0.0425, -0.0425, -0.0425, -0.0425, -0.0425, -0.0425, -0.0425, -0.0425,
           -0.0425, -0.0425, -0.0425, -0.0425, -0.0425, -0.0425, -0.0425, -0.0425, -0.0425, -0.0425,
           -0.0319, -0.0319, -0.0319, -0.0319, -0.0319, -0.0319, -0.0319, -0.016, -0.016, 0.0),
    median=(0.4444, 0.2207, 0.1859, 0.1312, 0.0994, 0.0826, 0.0728, 0.0616, 0.0465, 0.039, 0.0351, 0.0315,
            0.0297, 0.0169, 0.0206, 0.0102, 0.0097, 0.0068, 0.0062, 0.0014, 0.0086, 0.0143, 0.0008, 0.0009,
            0.0013, 0.001, 0.0008, 0.0, 0.0, 0.0),
    most=(0.8255, 0.6813, 0.5659, 0.4759, 0.392, 0.3389, 0.2678, 0.2369, 0.1745, 0.1745, 0.1485, 0.1485,
          0.1419, 0.1245, 0.1208, 0.1208, 0.1037, 0.1037, 0.1037, 0.0924, 0.0866, 0.0866, 0.0756, 0.0756,
          0.0618, 0.0285, 0.0153, 0.0153, 0.0153, 0.0),
    margin=0.07,
)  # fmt: skip


def decide(window: Window, flops_per_epoch: Sequence[float], max_epochs: int,
           bounds: RiseBounds = CPU_QUICK, min_epochs: int = 2) -> Decision | None:  # fmt: skip
    """The side of `window` on which the trial's stable F lands, once the bounds settle it; else None.

    Never decides before `min_epochs` epochs, nor for a trial whose F could still end inside the window.
    """
    epoch = len(flops_per_epoch)
    if epoch < min_epochs:
        return None
    f_now = flops_per_epoch[-1]
    low, forecast, high = bounds.interval(f_now, epoch, max_epochs)
    if low > window[1]:
        return Decision(ABOVE, epoch, f_now, max(forecast, low), low, high)
    if high < window[0]:
        return Decision(BELOW, epoch, f_now, min(forecast, high), low, high)
    return None
