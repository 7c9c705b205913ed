"""The one training loop: its step against a hand-written one, its schedule and λ ramp, and what it
does to real data (the loss falls; a large λ polarizes γ, no regularizer does not)."""

import math

import pytest
import torch
import torch.nn.functional as F

from pruning.prunable import scaling_factors
from pruning.regularizers import clamp_, init_scaling_factors_, polarization
from trainers import models
from trainers.config import Config, load_config, preset_section
from trainers.loop import (
    DivergedError,
    Penalty,
    evaluate,
    make_optimizer,
    make_penalty,
    make_scheduler,
    seed_epoch,
    train,
)
from trainers.trial import load_splits, start_model

SMOKE_LAM = preset_section("smoke")["lam_high"]  # large enough that the smoke trials prune


def _random_batches(n: int, batch: int = 8, size: int = 8, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n)]  # fmt: skip


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build("resnet20", num_classes=10)
    init_scaling_factors_(scaling_factors(model))
    return model


@pytest.fixture(scope="module")
def smoke(cifar10_dir):
    config = load_config("smoke", {"data_dir": str(cifar10_dir)})
    return config, load_splits(config, torch.device("cpu"))


def test_one_step_equals_a_hand_written_sgd_step_with_the_regularizer_and_clamp():
    config = Config(lr=0.5, momentum=0.9, weight_decay=5e-4, gamma_lr=0.2, gamma_upper=0.6)
    batches = _random_batches(2)
    model, reference = _tiny_model(), _tiny_model()
    penalty = make_penalty(config, lam=0.05, t=1.2, steps_per_epoch=len(batches))
    optimizer = make_optimizer(model, config, gammas=scaling_factors(model))
    train(model, batches, optimizer, None, epochs=1, penalty=penalty, gammas=scaling_factors(model))

    gammas = scaling_factors(reference)
    gamma_ids = {id(g) for g in gammas}
    params = list(reference.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    reference.train()
    for x, y in batches:
        loss = F.cross_entropy(reference(x), y) + 0.05 * polarization(gammas, 1.2)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, v in zip(params, grads, velocity, strict=True):
                v.mul_(0.9).add_(g + 5e-4 * p)
                p.sub_((0.2 if id(p) in gamma_ids else 0.5) * v)
            clamp_(gammas, 0.6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    assert all(g.min().item() >= 0 and g.max().item() <= 0.6 for g in scaling_factors(model))


def test_weight_decay_of_bn_parameters_is_a_setting():
    model = _tiny_model()
    config = Config(bn_weight_decay=False, weight_decay=1e-3, gamma_lr=0.05)
    groups = make_optimizer(model, config, gammas=scaling_factors(model)).param_groups
    gamma_ids = {id(g) for g in scaling_factors(model)}
    for group in groups:
        is_norm = all(p.dim() == 1 for p in group["params"])
        assert group["weight_decay"] == (0.0 if is_norm else 1e-3)
    assert [g["lr"] for g in groups if {id(p) for p in g["params"]} == gamma_ids] == [0.05]


def test_schedules_follow_their_formulas_per_iteration():
    def lrs(schedule, epochs=4, steps=5, **kw):
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([param], lr=0.1)
        scheduler = make_scheduler(optimizer, schedule, epochs, steps, **kw)
        out = []
        for _ in range(epochs * steps):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    cosine = lrs("cosine")
    assert cosine[0] == pytest.approx(0.1)
    assert cosine[10] == pytest.approx(0.05)
    assert cosine[15] == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.75)))
    step = lrs("step", milestones=(0.5, 0.75), decay=0.2)
    assert step[:10] == pytest.approx([0.1] * 10)
    assert step[10:15] == pytest.approx([0.02] * 5)
    assert step[15:] == pytest.approx([0.004] * 5)


def test_lambda_ramps_in_linearly():
    penalty = Penalty("polarization", lam=1.0, t=1.0, warmup_steps=10)
    assert [penalty.lam_at(s) for s in (0, 4, 9, 50)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    assert make_penalty(Config(lam_warmup_epochs=2), 1e-3, 1.2, steps_per_epoch=7).warmup_steps == 14
    assert make_penalty(Config(regularizer="none"), 1e-3, 1.2, 7) is None
    assert make_penalty(Config(regularizer="l1"), 1e-3, 1.2, 7).upper is None


def test_a_diverging_run_raises_diverged_error():
    model = _tiny_model()
    optimizer = make_optimizer(model, Config(lr=1e6))
    with pytest.raises(DivergedError, match="diverged"):
        train(model, _random_batches(8), optimizer, None, epochs=3)


def test_callback_stops_training_and_sees_1_based_epochs():
    model = _tiny_model()
    seen = []
    history = train(
        model,
        _random_batches(2),
        make_optimizer(model, Config(lr=0.01)),
        None,
        epochs=5,
        on_epoch_end=lambda epoch, stats: seen.append((epoch, stats["epoch"])) or len(seen) == 2,
    )
    assert seen == [(0, 1), (1, 2)] and [h["epoch"] for h in history] == [1, 2]


def test_evaluate_matches_a_direct_count():
    model = _tiny_model().eval()
    batches = _random_batches(3, batch=16)
    accuracy, loss = evaluate(model, batches)
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert accuracy == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_seeded_epochs_draw_the_same_batches_whatever_came_before(smoke):
    _, splits = smoke
    seed_epoch(splits.train, 3)
    first = [y for _, y in splits.train]
    list(splits.train)  # advance the loader's generator
    seed_epoch(splits.train, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, [y for _, y in splits.train], strict=True))


def test_the_loss_falls_on_real_data(smoke):
    config, splits = smoke
    model, _ = start_model(config, splits, torch.device("cpu"))
    before, _ = evaluate(model, splits.val)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, "cosine", 4, len(splits.train))
    history = train(model, splits.train, optimizer, scheduler, epochs=4)
    after, _ = evaluate(model, splits.val)
    losses = [h["loss"] for h in history]
    assert losses[-1] < losses[0] - 0.1 and losses[-1] < math.log(10)
    assert after > max(0.15, before + 0.05)  # chance is 0.1


def _polarization(model) -> tuple[float, float, float]:
    """(fraction of γ at ~0, fraction between 0.02 and half the upper mode, the upper mode), the
    upper mode being the median of the γ above 0.05."""
    gammas = torch.cat([g.detach().flatten() for g in scaling_factors(model)])
    upper = gammas[gammas > 0.05].median().item()
    at_zero = (gammas <= 0.02).float().mean().item()
    between = ((gammas > 0.02) & (gammas < upper / 2)).float().mean().item()
    return at_zero, between, upper


def test_a_large_lambda_polarizes_the_scaling_factors_and_no_regularizer_does_not(smoke):
    config, splits = smoke
    steps = len(splits.train)
    results = {}
    for name, penalty in (
        ("polarized", make_penalty(config, SMOKE_LAM, 1.2, steps)),
        ("plain", None),
    ):
        model, gammas = start_model(config, splits, torch.device("cpu"))
        optimizer = make_optimizer(model, config, gammas=gammas)
        train(model, splits.train, optimizer, make_scheduler(optimizer, "cosine", 4, steps), epochs=4,
              penalty=penalty, gammas=gammas)  # fmt: skip
        results[name] = _polarization(model)
    at_zero, between, upper = results["polarized"]
    assert at_zero > 0.25 and between < 0.05 and upper > 0.15, results  # two poles, a gap between
    at_zero, between, upper = results["plain"]
    assert at_zero < 0.01 and between < 0.05 and upper > 0.3, results  # one mode, none at zero
