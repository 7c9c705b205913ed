"""Sparsity regularizers on the BN scaling factors γ (§3.2 of the paper).

`polarization` is Eq. 2, R(γ) = t·‖γ‖₁ − ‖γ − γ̄·1‖₁, with γ̄ the mean over *all* scaling
factors of the network together (as the authors' code does), `l1` is Network Slimming's ‖γ‖₁,
and `clamp_` is the projection onto γᵢ ∈ [0, a] applied after every optimiser step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

Gammas = torch.Tensor | Sequence[torch.Tensor]

# §3.2: "we initialise the scaling factors to 0.5" when the polarization regularizer is used,
# the middle of [0, 1], so that no γ starts on either pole.
INITIAL_GAMMA = 0.5


def _flatten(gammas: Gammas) -> torch.Tensor:
    if isinstance(gammas, torch.Tensor):
        return gammas.reshape(-1)
    parts = [g.reshape(-1) for g in gammas]
    if not parts:
        raise ValueError("no scaling factors given")
    return torch.cat(parts)


def polarization(gammas: Gammas, t: float) -> torch.Tensor:
    """Eq. 2: t·Σ|γᵢ| − Σ|γᵢ − γ̄|, γ̄ the mean over all γ given (one tensor or a list).

    Returns a scalar tensor; autograd gives the subgradient 0 at the kinks of |·|.
    """
    g = _flatten(gammas)
    return t * g.abs().sum() - (g - g.mean()).abs().sum()


def l1(gammas: Gammas) -> torch.Tensor:
    """Network Slimming's sparsity term Σ|γᵢ| (Liu et al., 2017)."""
    return _flatten(gammas).abs().sum()


def init_scaling_factors_(gammas: Iterable[torch.Tensor], value: float = INITIAL_GAMMA) -> None:
    """Set every scaling factor to `value` in place (0.5 under polarization, §3.2)."""
    with torch.no_grad():
        for gamma in gammas:
            gamma.fill_(value)


@torch.no_grad()
def clamp_(gammas: Iterable[torch.Tensor], upper: float = 1.0) -> None:
    """Project every scaling factor onto [0, upper] in place (the constraint γᵢ ∈ [0, a] of Eq. 2)."""
    if upper <= 0:
        raise ValueError(f"upper bound of the scaling factors must be > 0, got {upper}")
    gammas = list(gammas)
    if gammas:
        torch._foreach_clamp_min_(gammas, 0.0)
        torch._foreach_clamp_max_(gammas, upper)
