"""A trial whose network is dead (every γ clamped to 0) or guesses (accuracy at chance level) fails
with the reason instead of reporting an F (issue 10: `trial --lam 1e6` reported "stable", F = 0.999)."""

from types import SimpleNamespace

import torch

from trainers.trial import dead_network


def _splits(classes: int, evaluated: int) -> SimpleNamespace:
    return SimpleNamespace(val=SimpleNamespace(num_samples=evaluated), test=None, num_classes=classes)


def test_every_gamma_zero_is_a_dead_network():
    zeros = [torch.zeros(16), torch.zeros(32)]
    reason = dead_network([{"val_accuracy": 0.5}], zeros, _splits(10, 500), min_epochs=1)
    assert "every scaling factor γ is 0" in reason
    assert dead_network([{"val_accuracy": 0.5}], [torch.zeros(16), torch.full((4,), 0.3)], _splits(10, 500), 1) == ""


def test_accuracy_at_chance_level_fails_after_min_epochs():
    gammas = [torch.full((8,), 0.5)]
    # 10 classes on 500 images: chance 0.1, three standard errors 0.04
    assert "at chance level (1/10 = 0.100 on 500 images)" in dead_network([{"val_accuracy": 0.13}] * 3, gammas,
                                                                           _splits(10, 500), min_epochs=3)  # fmt: skip
    assert dead_network([{"val_accuracy": 0.16}] * 3, gammas, _splits(10, 500), min_epochs=3) == ""
    assert dead_network([{"val_accuracy": 0.10}] * 2, gammas, _splits(10, 500), min_epochs=3) == ""  # too early
    # one class: accuracy 1.000 is guessing
    assert "at chance level (1/1" in dead_network([{"val_accuracy": 1.0}], gammas, _splits(1, 50), min_epochs=1)
