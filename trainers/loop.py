"""The one training loop: cross-entropy + λ·R(γ) (Eq. 1) by SGD, γ clamped to [0, a] (§3.2).

    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config.lr_schedule, config.epochs, len(loader), ...)
    penalty = make_penalty(config, lam, t, len(loader))          # None: plain training
    history = train(model, loader, optimizer, scheduler, epochs=config.epochs, penalty=penalty,
                    gammas=scaling_factors(model), on_epoch_end=lambda epoch, stats: stop_now)

The trial (`trainers.trial`) and the final job (`trainers.final`) are two uses of `train`.

Choices (the paper's Eq. 1 and the authors' code):
- Weight decay is the L2 term R(θ) of Eq. 1. The authors decay every parameter, BN's γ and β
  included (`--bn-wd` in their scripts), except on MobileNet-V2; `bn_weight_decay` picks this.
- R(γ) is computed once per step over all γ together (their global mean, Eq. 2), and γ is clamped
  to [0, a] after every optimiser step under the polarization regularizer (not under L1, whose
  Network-Slimming form has no upper bound).
- λ may ramp in linearly (`lam_warmup_epochs`) and γ may have its own learning rate (`gamma_lr`):
  levers for short CPU runs, off by default.
- The learning rate follows the schedule per iteration (cosine, or step at epoch boundaries).
- Inside a data-parallel job (torch.distributed initialised with more than one replica) the steps
  run through DDP with BN over the global batch, the epoch's stats are over all replicas and rank
  0's stop decision holds for all; `trainers.distributed` says what stays exact and why. In one
  process none of it runs.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pruning.regularizers import clamp_, l1, polarization
from trainers import distributed
from trainers.config import Config

# Every this many steps the loss is checked for NaN/inf (a host sync on a GPU); also at epoch end.
_CHECK_EVERY = 100

EpochCallback = Callable[[int, dict[str, Any]], bool | None]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class Penalty:
    """λ·R(γ), the sparsity term of Eq. 1; λ ramps in linearly over `warmup_steps` steps.

    `upper`: γ is projected onto [0, upper] after every step (None: no projection).
    """

    kind: str  # "polarization" (Eq. 2) or "l1"
    lam: float
    t: float = 1.0
    upper: float | None = 1.0
    warmup_steps: int = 0

    def lam_at(self, step: int) -> float:
        """λ at optimiser step `step` (0-based) of the run."""
        if self.warmup_steps <= 0:
            return self.lam
        return self.lam * min(1.0, (step + 1) / self.warmup_steps)

    def __call__(self, gammas: Sequence[torch.Tensor], step: int) -> torch.Tensor:
        term = polarization(gammas, self.t) if self.kind == "polarization" else l1(gammas)
        return self.lam_at(step) * term


def resolve_device(name: str) -> torch.device:
    """"auto" is cuda when a GPU is there, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_lam_t(lam: float, t: float) -> None:
    """Raise ValueError unless λ is a finite number >= 0 and t a finite number (Eq. 1, Eq. 2)."""
    if not (isinstance(lam, int | float) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"λ (--lam) must be a finite number >= 0, got {lam}")
    if not (isinstance(t, int | float) and math.isfinite(t)):
        raise ValueError(f"t (--t) must be a finite number, got {t}")


def make_penalty(config: Config, lam: float, t: float, steps_per_epoch: int) -> Penalty | None:
    """The configured regularizer at strength `lam` (and `t`), or None when it is "none"."""
    check_lam_t(lam, t)
    if config.regularizer == "none":
        return None
    upper = config.gamma_upper if config.regularizer == "polarization" else None
    return Penalty(config.regularizer, lam, t, upper, config.lam_warmup_epochs * steps_per_epoch)


def make_optimizer(model: nn.Module, config: Config, lr: float | None = None, gamma_lr: float | None = None,
                   gammas: Sequence[torch.Tensor] = ()) -> torch.optim.SGD:  # fmt: skip
    """SGD with momentum over weights and BN parameters (weight decay on BN per `bn_weight_decay`),
    the scaling factors `gammas` in a group of their own when they have their own learning rate.

    `lr` defaults to config.lr, `gamma_lr` to config.gamma_lr or else `lr`.
    """
    lr = config.lr if lr is None else lr
    gamma_lr = (config.gamma_lr or lr) if gamma_lr is None else gamma_lr
    if gamma_lr != lr and not gammas:
        raise ValueError("a learning rate of their own for γ needs the scaling factors (gammas=...)")
    gamma_ids = {id(g) for g in gammas} if gamma_lr != lr else set()
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                for p in m.parameters(recurse=False)}  # fmt: skip
    groups: dict[str, list[nn.Parameter]] = {"weights": [], "gammas": [], "norms": []}
    for p in model.parameters():
        if p.requires_grad:
            key = "gammas" if id(p) in gamma_ids else "norms" if id(p) in norm_ids else "weights"
            groups[key].append(p)
    norm_decay = config.weight_decay if config.bn_weight_decay else 0.0
    param_groups = [
        {"params": groups["weights"], "lr": lr, "weight_decay": config.weight_decay},
        {"params": groups["gammas"], "lr": gamma_lr, "weight_decay": norm_decay},
        {"params": groups["norms"], "lr": lr, "weight_decay": norm_decay},
    ]
    return torch.optim.SGD([g for g in param_groups if g["params"]], lr=lr, momentum=config.momentum)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, epochs: int, steps_per_epoch: int,
                   milestones: Sequence[float] = (0.5, 0.75), decay: float = 0.1
                   ) -> torch.optim.lr_scheduler.LambdaLR:  # fmt: skip
    """Per-iteration learning-rate factor over `epochs` epochs: cosine to 0, or ×`decay` at each
    milestone (fractions of the epochs, applied at the start of that epoch)."""
    total = max(1, epochs * steps_per_epoch)
    boundaries = [round(m * epochs) * steps_per_epoch for m in milestones]
    if schedule == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    elif schedule == "step":
        def factor(step: int) -> float:
            return decay ** sum(step >= b for b in boundaries)
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_epoch(loader: Any, epoch: int) -> None:
    """Make an epoch's shuffling and augmentation a function of (seed, epoch) alone, so that a
    resumed run, or a run on loaders another run used before, draws the same batches. Loaders
    without `set_epoch` (plain iterables) are left as they are."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)


def train(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, *, epochs: int, start_epoch: int = 0,
          penalty: Penalty | None = None, gammas: Sequence[torch.Tensor] = (), amp: bool = False,
          compile: bool = False, on_epoch_end: EpochCallback | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Train `model` from epoch `start_epoch` to `epochs` (0-based, exclusive); the per-epoch stats.

    Each step: cross-entropy (+ penalty(γ)), backward, SGD step, scheduler step, clamp of γ; `gammas`
    are the scaling factors the penalty acts on (`pruning.prunable.scaling_factors`, found once).
    `on_epoch_end(epoch, stats)` runs after every epoch (`stats["epoch"]` = epochs done, 1-based);
    returning True stops training. `amp` (bf16 autocast) and `compile` apply on a GPU only.
    Raises DivergedError when the loss becomes NaN or infinite.
    """
    device = next(model.parameters()).device
    on_gpu = device.type == "cuda"
    replica = distributed.Replica(model) if distributed.rank_and_size()[1] > 1 else None
    steps_through = replica.module if replica is not None else model
    forward = torch.compile(steps_through) if compile and on_gpu else steps_through
    if penalty is not None and not gammas:
        raise ValueError("a penalty needs the scaling factors it acts on (gammas=...)")
    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    history: list[dict[str, Any]] = []
    for epoch in range(start_epoch, epochs):
        model.train()
        seed_epoch(loader, epoch)
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        penalty_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, i = 0, -1
        step = epoch * steps_per_epoch
        with replica.training() if replica is not None else contextlib.nullcontext():
            for i, (x, y) in enumerate(loader):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and on_gpu):
                    logits = forward(x)
                    loss = F.cross_entropy(logits, y)
                total = loss
                if penalty is not None:
                    reg = penalty(gammas, step)
                    total = loss + reg
                    penalty_sum += reg.detach()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if penalty is not None and penalty.upper is not None:
                    clamp_(gammas, penalty.upper)
                loss_sum += loss.detach()
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
                step += 1
                if i % _CHECK_EVERY == 0 and not _finite(total, replica):
                    _diverged(total.item(), epoch, optimizer)
        seconds = time.perf_counter() - start
        batches = max(1, i + 1)
        loss_total, penalty_total, right = loss_sum.item(), penalty_sum.item(), correct.item()
        if replica is not None:  # over all replicas: images/s of the whole job
            loss_total, penalty_total, right, seen = replica.epoch_totals(loss_sum, penalty_sum, correct, seen)
        stats = {
            "epoch": epoch + 1,
            "loss": loss_total / batches,
            "penalty": penalty_total / batches,
            "train_accuracy": right / max(1, seen),
            "lr": optimizer.param_groups[0]["lr"],
            "lam": penalty.lam_at(step - 1) if penalty is not None else 0.0,
            "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else float("nan"),
            "workers": 1 if replica is None else replica.size,
        }
        if not (math.isfinite(stats["loss"]) and math.isfinite(stats["penalty"])):
            _diverged(stats["loss"] + stats["penalty"], epoch, optimizer)
        history.append(stats)
        stop = on_epoch_end is not None and on_epoch_end(epoch, stats)
        if replica is not None:
            stop = replica.lead_says(stop)
        if stop:
            break
    return history


def _finite(value: torch.Tensor, replica: distributed.Replica | None) -> bool:
    return torch.isfinite(value.detach()).item() if replica is None else replica.all_finite(value)


def _diverged(value: float, epoch: int, optimizer: torch.optim.Optimizer) -> None:
    lr = optimizer.param_groups[0]["lr"]
    raise DivergedError(f"training diverged: the loss became {value} in epoch {epoch + 1} (lr {lr:g})")


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, amp: bool = False) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of `model` over `loader`, in eval mode."""
    correct = total = 0
    loss_sum = 0.0
    with _eval_mode(model):
        device = next(iter(model.parameters()), torch.empty(0)).device
        for x, y in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
    if total == 0:
        raise ValueError("cannot evaluate on an empty loader")
    return correct / total, loss_sum / total


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    try:
        model.eval()
    except NotImplementedError:  # a torch.export module: its BN is fixed in eval mode already
        was_training = None
    try:
        yield
    finally:
        if was_training:
            model.train()
