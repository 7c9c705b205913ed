"""Eq. 2 against closed forms, Theorem 3.2 by brute force, Lemma 3.1's concavity by sampling."""

import itertools
import math

import pytest
import torch

from pruning.regularizers import clamp_, l1, polarization

T_VALUES = [-2.5, -1.0, 0.0, 0.6, 1.0, 1.2, 1.4, 1.9, 2.5]


def test_polarization_closed_form():
    gammas = torch.tensor([0.0, 1.0, 0.5, 0.5])  # mean 0.5, Σ|γ| = 2, Σ|γ − γ̄| = 1
    for t in T_VALUES:
        assert polarization(gammas, t).item() == pytest.approx(2 * t - 1)


def test_polarization_uses_the_global_mean_over_all_layers():
    layers = [torch.tensor([0.0, 0.2]), torch.tensor([0.8, 1.0])]
    # Global mean 0.5: Σ|γ − 0.5| = 0.5 + 0.3 + 0.3 + 0.5 = 1.6 (per-layer means would give 0.4).
    assert polarization(layers, 1.2).item() == pytest.approx(1.2 * 2.0 - 1.6)
    assert polarization(layers, 1.2).item() == pytest.approx(polarization(torch.cat(layers), 1.2).item())


def test_polarization_subgradient_matches_hand_derivation():
    gammas = torch.tensor([0.2, 0.9, 0.4], requires_grad=True)  # mean 0.5; signs of γ − γ̄: −, +, −
    t = 1.2
    polarization(gammas, t).backward()
    signs = torch.tensor([-1.0, 1.0, -1.0])
    # ∂/∂γⱼ [t Σ|γᵢ| − Σ|γᵢ − γ̄|] = t − sⱼ + (1/n) Σᵢ sᵢ   for γ > 0
    expected = t - signs + signs.sum() / 3
    torch.testing.assert_close(gammas.grad, expected)


def test_l1_closed_form():
    assert l1([torch.tensor([-0.5, 0.25]), torch.tensor([1.0])]).item() == pytest.approx(1.75)


def _vertex_value(n: int, ones: int, t: float) -> float:
    """R at a vertex with `ones` entries equal to 1: t·k − 2k(n − k)/n (independent closed form)."""
    return t * ones - 2 * ones * (n - ones) / n


def test_closed_form_of_vertices_agrees_with_polarization():
    for n, k, t in [(5, 2, 1.2), (7, 7, -1.0), (4, 0, 2.5)]:
        vertex = torch.tensor([1.0] * k + [0.0] * (n - k))
        assert polarization(vertex, t).item() == pytest.approx(_vertex_value(n, k, t), abs=1e-6)


@pytest.mark.parametrize("t", T_VALUES)
def test_theorem_3_2_minimum_over_all_vertices(t):
    """Theorem 3.2: min R over {0,1}ⁿ has ⌊np⌋ or ⌊np⌋+1 ones, p = 1/2 − t/4 clipped to [0, 1]."""
    p = min(1.0, max(0.0, 0.5 - t / 4))
    for n in range(1, 13):
        vertices = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)
        values = torch.stack([polarization(v, t) for v in vertices])
        best = values.min()
        minimisers = vertices[torch.isclose(values, best, atol=1e-9)]
        allowed = {math.floor(n * p), math.floor(n * p) + 1}
        assert set(minimisers.sum(dim=1).long().tolist()) <= allowed, (n, t)


@pytest.mark.parametrize("t", T_VALUES)
def test_lemma_3_1_no_interior_point_beats_the_best_vertex(t):
    generator = torch.Generator().manual_seed(0)
    for n in (2, 5, 9, 12):
        best_vertex = min(_vertex_value(n, k, t) for k in range(n + 1))
        points = torch.rand(2000, n, generator=generator, dtype=torch.float64)
        values = torch.stack([polarization(x, t) for x in points])
        assert values.min().item() >= best_vertex - 1e-9


def test_clamp_projects_onto_the_box():
    gammas = [torch.tensor([-0.3, 0.4, 1.7]), torch.tensor([2.0])]
    clamp_(gammas, upper=1.0)
    torch.testing.assert_close(torch.cat(gammas), torch.tensor([0.0, 0.4, 1.0, 1.0]))
    with pytest.raises(ValueError, match="upper"):
        clamp_(gammas, upper=0.0)
