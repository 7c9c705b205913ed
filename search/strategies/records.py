"""The records a strategy keeps: a proposal, a told trial, and the helpers on their values (λ, t, F).
Pure Python: no torch, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

Point = tuple[float, float]  # (λ, t), what a strategy proposes


@dataclass(frozen=True)
class Proposal:
    """One proposed trial: its id (unique within the strategy, kept in its state), λ and t."""

    id: int
    lam: float
    t: float

    @property
    def point(self) -> Point:
        return self.lam, self.t


@dataclass(frozen=True)
class Trial:
    """One told trial: its proposal's id, (λ, t), the FLOPs reduction it reached (None if it failed), its
    status, and for a trial decided early (search.strategies.early) the side of the window it stopped on
    (its F is then the forecast of its stable F)."""

    id: int
    lam: float
    t: float
    flops_reduction: float | None
    status: str  # "ok" or "failed"
    decided: str | None = None  # "above" | "below" | None: trained until F was stable
    known: bool = False  # a trial of an earlier search (`Strategy.recall`), not trained by this one

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def as_dict(self) -> dict[str, Any]:
        """Its fields; `known` only for a recalled trial."""
        fields = asdict(self)
        if not self.known:
            del fields["known"]
        return fields


def round_t(t: float) -> float:
    """t rounded to 10 decimals, so that t ± 0.1 steps land on the same values when they return."""
    return round(t, 10)


def as_flops(value: float | None) -> float | None:
    """The told FLOPs reduction as a float, or None for a failed trial (None or NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def interior_points(low: float, high: float, k: int) -> list[float]:
    """k points strictly inside (low, high): equally spaced, or log-spaced when low > 0."""
    if low > 0:
        a, b = math.log(low), math.log(high)
        return [math.exp(a + (b - a) * i / (k + 1)) for i in range(1, k + 1)]
    return [low + (high - low) * i / (k + 1) for i in range(1, k + 1)]
