"""Data-parallel training: what the one loop needs to run as one of W replicas (torch only).

The launch is not here: Ray Train starts the W worker processes and initialises torch.distributed
(`gloo` on CPU, `nccl` on CUDA; `search/train_workers.py`). This module only asks torch.distributed
who it is; with one worker (torch.distributed not initialised) nothing here runs and the loop is
the single-process one.

What stays exact under DDP, and why (Eq. 1, §3.2, §3.3):
- The regularizer: every replica adds λ·R(γ) of its own γ to its loss. The γ are identical on all
  replicas (same start, broadcast by DDP; the same all-reduced steps; the same clamp), so their
  penalty gradients are identical and DDP's *average* of the W gradients contains that gradient
  once - R(γ) is not counted W times, and the cross-entropy gradient is the global-batch mean.
- The clamp of γ to [0, a] runs on every replica after its own optimiser step (the loop does it).
- BN statistics, one policy: the global batch. `GlobalBatchNorm` normalises with the mean and
  variance of all W slices of the step (all-reduced sums; the closed-form backward), so a W-worker
  step is the step of one worker on the global batch, and F(λ, t) does not depend on how many
  workers a trial had. (torch's SyncBatchNorm does the same but only on GPUs; this one runs on gloo too and
  is the one the CPU tests check.) The authors' multi-GPU runs kept per-replica statistics; with
  their 512 images over 8 GPUs (64 each) the difference is small, ours makes it zero.
- The data: every replica draws the same permutation from (seed, epoch) and keeps its contiguous
  slice of each global batch (`shard`), so the W slices of a step are exactly one worker's batch.
- F, the threshold and checkpoints: rank 0 only (`is_lead`); rank 0's stop decision after each
  epoch is broadcast (`Replica.lead_says`) so that every replica stops after the same epoch.

Exact means: the same mathematics, summed in another order. In float64 a 2-worker ResNet-20 is
3e-15 from 1 worker after 8 steps (7e-13 after 15); in float32 the rounding difference (~1e-7)
flips a ReLU unit within a few steps and the runs part, as one process does from itself with
its batch order reversed (docs/cluster.md, section 3; tests/trainers/test_distributed.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def rank_and_size() -> tuple[int, int]:
    """(this process' rank, number of replicas); (0, 1) outside a data-parallel job."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_lead() -> bool:
    """True in rank 0 of a data-parallel job, and in a single-process run: the one that measures F,
    takes the threshold, writes checkpoints and files."""
    return rank_and_size()[0] == 0


def shard(loader: Any, rank: int | None = None, size: int | None = None) -> Any:
    """Make `loader` yield this replica's part of every global batch (trainers.data.loaders); the
    global batch stays `loader.batch_size`, which the number of replicas must divide."""
    here = rank_and_size()
    rank, size = here[0] if rank is None else rank, here[1] if size is None else size
    if size > 1:
        loader.shard(rank, size)
    return loader


class _GlobalBatchNormFunction(torch.autograd.Function):
    """Batch norm over the global batch with its closed-form backward (that of torch's
    SyncBatchNorm): one all-reduce of (Σx, n) and one of Σ(x − mean)² forward, one of (Σdy,
    Σdy·(x − mean)) backward. The sums accumulate in float64, as torch's CPU batch norm does:
    differentiating the float32 sums through autograd instead loses ~1% of a ResNet-20's gradients
    to cancellation. dγ and dβ are this replica's part; DDP averages them with the rest."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
        sums = torch.cat([x.sum(dims, dtype=torch.float64),
                          torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)])  # fmt: skip
        dist.all_reduce(sums)
        total, mean = sums[-1], sums[:-1] / sums[-1]
        centered = x - mean.to(x.dtype).view(shape)
        var = centered.square().sum(dims, dtype=torch.float64)
        dist.all_reduce(var)
        var /= total
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        ctx.save_for_backward(centered, invstd, weight)
        ctx.total = total
        y = centered * (invstd * weight).view(shape) + bias.view(shape)
        unbiased = var * (total / (total - 1))
        ctx.mark_non_differentiable(mean, unbiased)
        return y, mean, unbiased  # the unbiased variance for the running statistics

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, *_: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        centered, invstd, weight = ctx.saved_tensors
        dims, shape = [0, *range(2, dy.dim())], [1, -1] + [1] * (dy.dim() - 2)
        local = torch.stack([dy.sum(dims, dtype=torch.float64), (dy * centered).sum(dims, dtype=torch.float64)])
        grad_weight, grad_bias = (local[1] * invstd).to(weight.dtype), local[0].to(weight.dtype, copy=True)
        dist.all_reduce(local)
        mean_dy, mean_dy_centered = (local / ctx.total).to(dy.dtype)
        dx = (dy - mean_dy.view(shape) - centered * (invstd.square() * mean_dy_centered).view(shape))
        return dx * (invstd * weight).view(shape), grad_weight, grad_bias, None


class GlobalBatchNorm(nn.Module):
    """Training-mode batch norm of `bn` over the global batch (the W replicas' slices together).

    It holds no state of its own: γ, β and the running statistics are `bn`'s, updated in place,
    so swapping it in and out of a model (`Replica.training`) leaves the model's BNs as they were.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not bn.training:
            return bn(x)
        ones = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
        weight = bn.weight if bn.affine else ones
        bias = bn.bias if bn.affine else torch.zeros_like(ones)
        y, mean, var = _GlobalBatchNormFunction.apply(x, weight, bias, bn.eps)
        if bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                bn.running_mean.mul_(1 - m).add_(mean.to(bn.running_mean.dtype), alpha=m)
                bn.running_var.mul_(1 - m).add_(var.to(bn.running_var.dtype), alpha=m)
        return y


class Replica:
    """One replica's view of `model`: the DDP module to run training steps through, the global-batch
    BN swapped in while it trains, and the few collectives the loop needs."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.rank, self.size = rank_and_size()
        device = next(model.parameters()).device
        self._bns = [(parent, name, child) for parent in model.modules()
                     for name, child in parent.named_children()
                     if isinstance(child, nn.modules.batchnorm._BatchNorm)]  # fmt: skip
        self._global = [GlobalBatchNorm(bn) for _, _, bn in self._bns]
        # Buffers are synced once, not before every step: the global-batch statistics keep them identical.
        ids = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else None
        self.module = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    @contextlib.contextmanager
    def training(self) -> Iterator[nn.Module]:
        """The DDP module, with every BN of the model normalising over the global batch until exit."""
        for (parent, name, _), global_bn in zip(self._bns, self._global, strict=True):
            setattr(parent, name, global_bn)
        try:
            yield self.module
        finally:
            for parent, name, bn in self._bns:
                setattr(parent, name, bn)

    def epoch_totals(self, loss_sum: torch.Tensor, penalty_sum: torch.Tensor, correct: torch.Tensor,
                     seen: int) -> tuple[float, float, int, int]:  # fmt: skip
        """An epoch's sums over all replicas: loss and penalty averaged (per batch), correct and seen summed."""
        totals = torch.stack([loss_sum.float(), penalty_sum.float(), correct.float(),
                              torch.tensor(float(seen), device=loss_sum.device)])  # fmt: skip
        dist.all_reduce(totals)
        loss, penalty, right, images = totals.tolist()
        return loss / self.size, penalty / self.size, round(right), round(images)

    def all_finite(self, value: torch.Tensor) -> bool:
        """Whether `value` is finite on every replica (all answer alike, so all raise or none does)."""
        flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def lead_says(self, answer: bool | None) -> bool:
        """Rank 0's `answer` on every replica (the trial's stop decision: only rank 0 measures F)."""
        flag = torch.tensor([1.0 if answer else 0.0], device=next(self.model.parameters()).device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())
