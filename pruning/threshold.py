"""The pruning threshold: the first valley of the histogram of |γ| (§3.3), global or per layer.

§3.3 draws one histogram and does not say of which γ. `threshold_scope` picks:
- "global": one histogram of all the network's γ, one threshold (`first_valley(all_gammas(...))`);
- "per_layer": one histogram and threshold per BN layer (`per_layer_thresholds`), as the authors'
  code does (github.com/polarizationpruning/PolarizationPruning: cifar/resprune_gate.py and
  cifar/vggprune_gate.py call `search_threshold` in cifar/models/common.py once per layer; on
  ImageNet `ThresholdPruner` in imagenet/models/common.py does the same). Their rule is ours:
  100 bins over [0, 1], the first bin i+1 with count ≤ both neighbours, its left edge.
"""

from __future__ import annotations

import torch


def histogram(gammas: torch.Tensor, bin_width: float = 0.01, upper: float = 1.0) -> torch.Tensor:
    """Counts of |γ| in bins of `bin_width` over [0, upper], as numpy.histogram with that range.

    A value equal to `upper` counts in the last bin; values above `upper` are ignored.
    """
    if bin_width <= 0 or upper <= 0:
        raise ValueError(f"bin_width and upper must be > 0, got {bin_width} and {upper}")
    values = torch.as_tensor(gammas).detach().reshape(-1).to(torch.float64).abs()
    if values.numel() == 0:
        raise ValueError("cannot build a histogram of no scaling factors")
    if torch.isnan(values).any():
        raise ValueError("scaling factors contain NaN")
    bins = max(1, round(upper / bin_width))
    values = values[values <= upper]
    index = torch.floor(values * (bins / upper)).long().clamp_(max=bins - 1)
    return torch.bincount(index, minlength=bins)


def first_valley(gammas: torch.Tensor, bin_width: float = 0.01, upper: float = 1.0) -> float | None:
    """§3.3: scan the histogram of |γ| from the left for the first local-minimum bin.

    The first bin j ≥ 1 whose count is ≤ both neighbours' counts; returns its left edge, the
    threshold below which channels are pruned, or None when no bin has two neighbours to beat.
    """
    counts = histogram(gammas, bin_width, upper).tolist()
    width = upper / len(counts)
    for j in range(1, len(counts) - 1):
        if counts[j] <= counts[j - 1] and counts[j] <= counts[j + 1]:
            return j * width
    return None


def per_layer_thresholds(gammas: list[torch.Tensor], bin_width: float = 0.01,
                         upper: float = 1.0) -> list[float | None]:
    """The first valley of each layer's own γ histogram (None for a layer without one: it keeps all)."""
    return [first_valley(g, bin_width, upper) for g in gammas]


def all_gammas(gammas: list[torch.Tensor]) -> torch.Tensor:
    """All scaling factors of a network as one flat tensor (the histogram is global, §3.3)."""
    if not gammas:
        raise ValueError("the model has no prunable scaling factors")
    return torch.cat([g.detach().reshape(-1) for g in gammas])

