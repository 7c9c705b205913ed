"""A trial of the search: polarized training that measures F after every epoch until F is stable (§3.3).

    result = run_trial(load_config("smoke", {"data_dir": "..."}), lam=1e-2, t=1.2, report=print)
    result.status, result.flops_reduction, result.history

After every epoch the trial takes the pruning threshold at the first valley of the histogram of
all γ (§3.3), the FLOPs reduction F = 1 − FLOPs(pruned)/FLOPs(original) of the model that
`pruning.surgery.prune` would cut at that threshold, and the validation accuracy, and passes them
to `report` (Ray's `tune.report` in a search). It stops when F moved by at most `f_tol` over the
last `patience` epochs (the window of patience + 1 values; and at least `min_epochs` epochs), or
at `max_epochs` (the paper: 30 on ImageNet). The learning-rate schedule is that of the full run
(`epochs`), so a trial is the first `max_epochs` epochs of the final job's training.

A NaN/inf loss ends the trial with status "failed", never an exception. With a `checkpoint_dir`
the state after every epoch is written atomically to `checkpoint_dir/trial.pt`, and a trial
started again with the same (λ, t) and training settings resumes from it, with the same result.
With `warm_start_epochs` > 0 every trial starts from one unregularized baseline, trained once and
cached under `cache_root(config)/baselines/`.

In a data-parallel trial (Ray Train workers, `trainers.distributed`) every replica runs this same
function on its shard of the data; rank 0 alone measures F, writes the checkpoint and returns the
result, its stop decision holds for all, and every replica resumes from the same checkpoint. The
other replicas return status "replica". Every record holds `images_per_s`, over all replicas.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.prunable import polarized_bns, prunable_bns, scaling_factors
from pruning.regularizers import init_scaling_factors_
from trainers import baselines, distributed, loop, models
from trainers.config import Config, cache_root
from trainers.pruning_rule import choose, pruning_threshold, reference_flops  # noqa: F401 - the trial's rule

STABLE, MAX_EPOCHS, FAILED, DECIDED = "stable", "max_epochs", "failed", "decided"
REPLICA = "replica"  # a data-parallel replica other than rank 0: it measured nothing
# What a trial reports after every epoch (to the search, the CLI and MLflow); its records hold more.
REPORTED = ("epoch", "flops_reduction", "threshold", "val_accuracy", "loss")
CHECKPOINT = "trial.pt"
# Settings that do not change a trial's trajectory: a checkpoint made under other values resumes.
_NOT_TRAJECTORY = frozenset({
    "data_dir", "download", "device", "num_workers", "threads", "cache_dir", "compile", "eval_batch_size",
    "latency_runs", "max_epochs", "min_epochs", "f_tol", "patience", "finetune_epochs", "finetune_lr",
    "finetune_schedule", "finetune_milestones", "finetune_decay", "workers_per_trial", "final_workers",
})  # fmt: skip

Report = Callable[[dict[str, Any]], Any]
# Given the history so far, a decision that ends the trial early (a dict with its reason), or None.
Decide = Callable[[list[dict[str, Any]]], dict[str, Any] | None]


@dataclass
class TrialResult:
    """The outcome of a trial; `flops_reduction` is NaN when it failed."""

    status: str  # "stable" | "max_epochs" | "decided" | "failed"
    flops_reduction: float
    threshold: float | None
    val_accuracy: float
    epochs: int
    history: list[dict[str, Any]]
    message: str = ""
    model_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    decision: dict[str, Any] | None = None  # what `decide` returned when it ended the trial


def run_trial(config: Config, lam: float, t: float, report: Report | None = None,
              checkpoint_dir: str | os.PathLike | None = None, splits: Any = None,
              decide: Decide | None = None) -> TrialResult:  # fmt: skip
    """Train with λ·R(γ; t) until F is stable or `max_epochs`; report every epoch (see module doc).

    `decide(history)` may end the trial earlier (status "decided"): the search knows its answer."""
    loop.check_lam_t(lam, t)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = loop.resolve_device(config.device)
    splits = splits if splits is not None else load_splits(config, device)
    try:
        model, gammas = start_model(config, splits, device)
    except loop.DivergedError as error:  # training the warm-start baseline
        return TrialResult(FAILED, math.nan, None, math.nan, 0, [], f"warm-start baseline: {error}")
    input_shape = tuple(splits.input_shape)
    original_flops = reference_flops(config, model, input_shape, splits.num_classes)
    bns = prunable_bns(model, config.prunable_set)
    steps = len(splits.train)
    optimizer = loop.make_optimizer(model, config, gammas=gammas)
    scheduler = loop.make_scheduler(optimizer, config.lr_schedule, config.epochs, steps, config.lr_milestones,
                               config.lr_decay)  # fmt: skip
    penalty = loop.make_penalty(config, lam, t, steps)
    key = {**{k: v for k, v in config.to_dict().items() if k not in _NOT_TRAJECTORY}, "lam": lam, "t": t}
    path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    history, message = _resume(path, key, model, optimizer, scheduler)
    decision: dict[str, Any] | None = None
    lead = distributed.is_lead()

    def done() -> bool:
        nonlocal decision
        if decide is not None and decision is None and history:
            decision = decide(history)
        return decision is not None or is_stable(history, config)

    def on_epoch_end(epoch: int, stats: dict[str, Any]) -> bool:
        if not lead:  # rank 0 measures and decides (the loop broadcasts its answer)
            history.append({"epoch": stats["epoch"]})
            if report is not None:
                report({"epoch": stats["epoch"], "status": REPLICA})
            return False
        record = _measure(model, bns, splits, config, input_shape, original_flops)
        record.update(epoch=stats["epoch"], loss=stats["loss"], penalty=stats["penalty"], lam=lam, t=t,
                      lam_now=stats["lam"], lr=stats["lr"], seconds=stats["seconds"],
                      images_per_s=stats["images_per_s"], workers=stats.get("workers", 1))  # fmt: skip
        history.append(record)
        if path is not None:
            _save(path, key, model, optimizer, scheduler, history)
        if report is not None:
            report(dict(record))
        return done()

    if len(history) < config.max_epochs and not done():
        try:
            loop.train(model, splits.train, optimizer, scheduler, epochs=config.max_epochs,
                       start_epoch=len(history), penalty=penalty, gammas=gammas, amp=config.amp,
                       compile=config.compile, on_epoch_end=on_epoch_end)  # fmt: skip
        except loop.DivergedError as error:
            return TrialResult(FAILED, math.nan, None, math.nan, len(history), history, str(error))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if not lead:  # its state is rank 0's (the tests compare them)
        return TrialResult(REPLICA, math.nan, None, math.nan, len(history), [], message, state)
    last = history[-1]
    dead = dead_network(history, gammas, splits, config.min_epochs)
    if dead:
        return TrialResult(FAILED, math.nan, last["threshold"], last["val_accuracy"], len(history), history, dead)
    status = DECIDED if decision is not None else STABLE if is_stable(history, config) else MAX_EPOCHS
    return TrialResult(status, last["flops_reduction"], last["threshold"], last["val_accuracy"], len(history),
                       history, message, state, decision)  # fmt: skip


def dead_network(history: list[dict[str, Any]], gammas: list[torch.Tensor], splits: Any, min_epochs: int) -> str:
    """Why the network a trial ended with measures nothing, or "": every γ clamped to 0 (λ far too
    large: F near 1 with no network left), or, after `min_epochs`, an accuracy within three standard
    errors of guessing (1/classes on the evaluated images). Such an F is no result for the search."""
    if not any(bool(g.detach().ne(0).any()) for g in gammas):
        return "every scaling factor γ is 0 (clamped): the network is dead, λ is far too large"
    evaluated = (splits.val if splits.val is not None else splits.test).num_samples
    chance, accuracy = 1.0 / splits.num_classes, history[-1]["val_accuracy"]
    if len(history) >= min_epochs and accuracy <= chance + 3.0 * math.sqrt(chance * (1 - chance) / max(1, evaluated)):
        return (f"accuracy {accuracy:.3f} is at chance level (1/{splits.num_classes} = {chance:.3f} on "
                f"{evaluated} images): the network learned nothing, so its F means nothing")
    return ""


def is_stable(history: list[dict[str, Any]], config: Config) -> bool:
    """F moved by at most f_tol over the last `patience` epochs, after at least `min_epochs`."""
    if len(history) < max(config.min_epochs, config.patience + 1):
        return False
    window = [h["flops_reduction"] for h in history[-(config.patience + 1):]]
    return max(window) - min(window) <= config.f_tol


def _measure(model: nn.Module, bns: list[nn.Module], splits: Any, config: Config,
             input_shape: tuple[int, ...], original_flops: int) -> dict[str, Any]:  # fmt: skip
    """Threshold (per-layer: their median), F of the model `prune` would produce (trainers.pruning_rule),
    and accuracy on the val (else test) split."""
    choice = choose(model, bns, config, input_shape, original_flops)
    accuracy, loss = loop.evaluate(model, splits.val if splits.val is not None else splits.test, config.amp)
    return {"flops_reduction": choice.flops_reduction, "threshold": choice.summary, "val_accuracy": accuracy,
            "val_loss": loss, "gammas_below_threshold": choice.below}  # fmt: skip


def load_splits(config: Config, device: torch.device) -> Any:
    """The data of `config` (trainers.data.load with its fields)."""
    from trainers import data

    if config.data_dir is None:
        raise ValueError(f"no data folder given for {config.dataset} (set data_dir, --data-dir)")
    return data.load(config.dataset, config.data_dir, subset=config.subset, val_size=config.val_size,
                     seed=config.seed, downsample=config.downsample, download=config.download, device=device,
                     batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
                     num_workers=config.num_workers, cache_dir=config.cache_dir,
                     channels_last=config.channels_last)  # fmt: skip


def start_model(config: Config, splits: Any, device: torch.device) -> tuple[nn.Module, list[torch.Tensor]]:
    """The seeded model every run of `config` starts from, and the scaling factors the regularizer
    acts on (those of `prunable_set`): every prunable γ = gamma_init (§3.2; the authors' `bn_init_value`
    sets every BN), or the cached unregularized baseline when warm_start_epochs > 0. A uniform
    baseline's model has the width that gives `baseline_flops` (trainers.baselines)."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    num_classes = config.num_classes or splits.num_classes
    width = 1.0
    if config.baseline == "uniform":
        width = baselines.uniform_width(config.model, num_classes, tuple(splits.input_shape), config.baseline_flops)
    model = models.build(config.model, num_classes, width=width).to(device, memory_format=memory_format)
    init_scaling_factors_(scaling_factors(model), config.gamma_init)
    gammas = scaling_factors(polarized_bns(model, config.prunable_set))
    if config.warm_start_epochs > 0:
        model.load_state_dict(_baseline(config, splits, model, gammas))
    return model, gammas


def _baseline(config: Config, splits: Any, model: nn.Module, gammas: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state of `model` trained warm_start_epochs epochs without regularizer, cached on disk
    keyed by the settings that shape it (concurrent trials may both train it; the write is atomic)."""
    fields = ("model", "dataset", "num_classes", "subset", "val_size", "downsample", "seed", "batch_size", "lr",
              "momentum", "weight_decay", "bn_weight_decay", "lr_schedule", "lr_milestones", "lr_decay",
              "gamma_init", "gamma_lr", "warm_start_epochs", "amp")  # fmt: skip
    key = {k: config.to_dict()[k] for k in fields}
    if config.baseline == "uniform":
        key["baseline_flops"] = config.baseline_flops  # the width
    key["data_dir"] = str(Path(config.data_dir).expanduser().resolve()) if config.data_dir else None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root(config) / "baselines" / f"{config.model}-{digest}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location=next(model.parameters()).device, weights_only=True)["model"]
        except Exception:  # noqa: BLE001 - a broken cache file is trained again and rewritten
            pass
    optimizer = loop.make_optimizer(model, config, gammas=gammas)
    epochs, steps = config.warm_start_epochs, len(splits.train)
    scheduler = loop.make_scheduler(optimizer, config.lr_schedule, epochs, steps, config.lr_milestones, config.lr_decay)
    loop.train(model, splits.train, optimizer, scheduler, epochs=epochs, amp=config.amp,
          compile=config.compile)  # fmt: skip
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _atomic_save({"model": state, "key": key}, path)
    return state


def _resume(path: Path | None, key: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any) -> tuple[list[dict[str, Any]], str]:  # fmt: skip
    """Load the checkpoint at `path` into the objects when it was made by the same trial settings;
    returns (history so far, a note for the result's message)."""
    if path is None or not path.is_file():
        return [], ""
    try:
        state = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - an unreadable checkpoint is started over
        return [], f"checkpoint {path} unreadable ({type(error).__name__}), started over"
    if state.get("key") != key:
        return [], f"checkpoint {path} was made with other settings, started over"
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    random.setstate(_as_random_state(state["rng"]["python"]))
    return list(state["history"]), f"resumed from epoch {len(state['history'])}"


def _save(path: Path, key: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
          history: list[dict[str, Any]]) -> None:  # fmt: skip
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    _atomic_save({"key": key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict(), "history": history, "rng": rng}, path)  # fmt: skip


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, partial)
    os.replace(partial, path)


def _as_random_state(state: Any) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss
