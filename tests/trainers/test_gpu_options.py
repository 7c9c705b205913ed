"""The GPU options on CPU, each against the plain path: bf16 autocast, channels_last, torch.compile.

No GPU has run this project yet (bench/gpu.sh is the check for one); what does not need a GPU is
checked here, on a pruned ResNet-20 (residual streams with ChannelAdd) at 16×16, with the masked
model as the independent truth. Tolerances: float32 paths 1e-4 of the largest logit (rounding order
only); bf16 autocast 5e-2 of it (8-bit mantissa, ~0.4 % per op over 20 layers).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning.fold import for_inference
from pruning.prunable import prunable_bns
from pruning.surgery import masked, prune
from trainers.models import build

SHAPE = (3, 16, 16)
THRESHOLD = 0.1


def polarized_resnet20() -> nn.Module:
    """ResNet-20 with 40 % of every prunable BN's γ near 0, random β and BN statistics."""
    torch.manual_seed(0)
    model = build("resnet20", num_classes=10)
    with torch.no_grad():
        for bn in prunable_bns(model):
            n = bn.num_features
            bn.weight.copy_(torch.where(torch.rand(n) < 0.4, 0.02 * torch.rand(n), 0.3 + 0.7 * torch.rand(n)))
            bn.bias.copy_(0.1 * torch.randn(n))
        model.train()(torch.randn(16, *SHAPE))  # BN statistics that depend on the layer
    return model.eval()


@pytest.fixture(scope="module")
def models() -> tuple[nn.Module, nn.Module]:
    model = polarized_resnet20()
    return masked(model, THRESHOLD).eval(), prune(model, THRESHOLD, SHAPE).eval()


def close(got: torch.Tensor, want: torch.Tensor, tolerance: float) -> bool:
    return got.shape == want.shape and bool((got.float() - want).abs().max() <= tolerance * want.abs().max())


def test_bf16_autocast_gives_the_masked_models_output(models):
    reference, pruned = models
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        want = reference(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = pruned(x)
    assert got.dtype == torch.bfloat16
    assert close(got, want, 5e-2)


@pytest.mark.parametrize("fold", [False, True])
def test_channels_last_gives_the_masked_models_output(models, fold):
    reference, pruned = models
    fast = (for_inference(pruned) if fold else copy.deepcopy(pruned)).to(memory_format=torch.channels_last)
    x = torch.randn(4, *SHAPE)
    with torch.inference_mode():  # the stream's additions run in place here
        want, got = reference(x), fast(x.contiguous(memory_format=torch.channels_last))
    assert close(got, want, 1e-4)


@pytest.mark.slow
def test_compiled_pruned_model_gives_the_masked_models_output(models):
    reference, pruned = models
    compiled = torch.compile(for_inference(pruned))
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        want, got = reference(x), compiled(x)
    assert close(got, want, 1e-4)


def sgd_step(model: nn.Module, forward: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool) -> torch.Tensor:
    """One training step as `trainers.loop.train` takes it (cross-entropy, SGD); the loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(forward(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach().float()


def step_both(models, compiled: bool, amp: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], float, float]:
    _, pruned = models
    plain, other = copy.deepcopy(pruned).train(), copy.deepcopy(pruned).train()
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
    want = sgd_step(plain, plain, x, y, amp=False)
    got = sgd_step(other, torch.compile(other) if compiled else other, x, y, amp=amp)
    return list(plain.parameters()), list(other.parameters()), float(want), float(got)


def test_a_bf16_training_step_follows_the_float32_step(models):
    plain, other, want, got = step_both(models, compiled=False, amp=True)
    assert got == pytest.approx(want, rel=5e-2)
    moved = [(p - q).abs().max() / (p.abs().max() + 1e-12) for p, q in zip(plain, other, strict=True)]
    assert max(moved) < 5e-2


@pytest.mark.slow
def test_a_compiled_training_step_gives_the_plain_step(models):
    plain, other, want, got = step_both(models, compiled=True, amp=False)
    assert got == pytest.approx(want, rel=1e-5)
    for p, q in zip(plain, other, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
