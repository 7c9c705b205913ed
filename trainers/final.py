"""The final job: full polarized training, prune at the first valley, fine-tune, evaluate, export (§3.3, §4).

    result = run_final(config, lam, t, "outputs/final")

With the (λ, t) a search found: train `epochs` epochs with λ·R(γ; t) (the same loop and start as
the trials), take the threshold at the first valley of the γ histogram, cut the channels below it
with `pruning.surgery.prune`, fine-tune the smaller network `finetune_epochs` epochs at
`finetune_lr` without regularizer, and measure test accuracy before pruning, right after it and
after fine-tuning, FLOPs and parameters before and after, and the median inference latency of
both networks as deployed (`pruning.fold.for_inference`: eval mode, BN folded into its conv, no
identity calls; batch 1 and eval_batch_size, on the training device, the two timed in turn) with
the measured speed-up beside the ideal 1/(1 − F).

Written to `output_dir`:
- `pruned_model.pt2` - the fine-tuned pruned network as a `torch.export` program (CPU, eval mode
  with BN folded into its conv, any batch size). It loads without this project's code:

      import torch
      model = torch.export.load("pruned_model.pt2").module()
      logits = model(images)  # float32 N×C×H×W, normalized like the training data

  (the loaded module is fixed in eval mode: do not call `.eval()`/`.train()` on it.)
- `pruned_state_dict.pt`, `model.pt` - state dicts of the pruned and of the unpruned polarized
  network (the pruned one needs its pruned architecture: use the export to run it).
- `final.json` - every number above, the threshold, (λ, t), the config and the per-epoch history.

Data-parallel (`final_workers` > 1, Ray Train workers; `trainers.distributed`): every replica trains,
prunes (the same cut: its γ are rank 0's) and fine-tunes on its shard; rank 0 alone measures,
exports and writes, and the other replicas return None.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.flops import count_flops
from pruning.fold import for_inference
from pruning.prunable import prunable_bns
from pruning.surgery import prune
from trainers.config import Config
from trainers.distributed import is_lead
from trainers.loop import (
    check_lam_t,
    evaluate,
    make_optimizer,
    make_penalty,
    make_scheduler,
    resolve_device,
    train,
)
from trainers.pruning_rule import choose, reference_flops
from trainers.trial import Report, load_splits, start_model

EXPORT_NAME = "pruned_model.pt2"


@dataclass
class FinalResult:
    """The numbers of a final job; latencies are {batch size: median milliseconds}, `speedup` is
    {batch size: latency before / latency after}, to compare with `ideal_speedup` = 1/(1 − F)."""

    acc_before_pruning: float
    acc_after_pruning: float
    acc_after_finetune: float
    flops_before: int
    flops_after: int
    flops_reduction: float
    params_before: int
    params_after: int
    latency_ms_before: dict[int, float]
    latency_ms_after: dict[int, float]
    threshold: float | None
    model_path: Path
    pruned_model: nn.Module = field(repr=False)
    example_input: torch.Tensor = field(repr=False)
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    speedup: dict[int, float] = field(default_factory=dict)  # derived from the latencies
    ideal_speedup: float = math.nan  # derived from flops_reduction

    def __post_init__(self) -> None:
        shared = sorted(set(self.latency_ms_before) & set(self.latency_ms_after))
        self.speedup = {b: self.latency_ms_before[b] / self.latency_ms_after[b] for b in shared}
        self.ideal_speedup = 1.0 / (1.0 - self.flops_reduction) if self.flops_reduction < 1 else math.inf

    def summary(self) -> dict[str, Any]:
        """The job's numbers as JSON-able values (final.json, result.json): every field but the
        model, the example input and the history; `model_path` as a string."""
        skip = {"pruned_model", "example_input", "history"}
        numbers = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        return {**numbers, "model_path": str(self.model_path)}

    def metrics(self) -> dict[str, float]:
        """The numbers as flat metrics (MLflow); latencies per batch size: latency_ms_after_b1, ..."""
        flat: dict[str, float] = {}
        for key, value in self.summary().items():
            if isinstance(value, dict):
                flat.update({f"{key}_b{batch}": float(ms) for batch, ms in value.items()})
            elif key != "model_path":
                flat[key] = math.nan if value is None else float(value)
        return flat


def run_final(config: Config, lam: float, t: float, output_dir: str | os.PathLike, report: Report | None = None,
              splits: Any = None) -> FinalResult | None:  # fmt: skip
    """Train, prune, fine-tune, measure and export (see the module docstring); `report` gets one
    dict per epoch with its `phase` ("train" or "finetune")."""
    check_lam_t(lam, t)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    splits = splits if splits is not None else load_splits(config, device)
    input_shape = tuple(splits.input_shape)
    steps = len(splits.train)
    history: list[dict[str, Any]] = []

    def log(phase: str):
        def on_epoch_end(epoch: int, stats: dict[str, Any]) -> bool:
            record = {"phase": phase, **stats}
            history.append(record)
            if report is not None:
                report(dict(record))
            return False
        return on_epoch_end

    model, gammas = start_model(config, splits, device)
    optimizer = make_optimizer(model, config, gammas=gammas)
    scheduler = make_scheduler(optimizer, config.lr_schedule, config.epochs, steps, config.lr_milestones,
                               config.lr_decay)  # fmt: skip
    train(model, splits.train, optimizer, scheduler, epochs=config.epochs, penalty=make_penalty(config, lam, t, steps),
          gammas=gammas, amp=config.amp, compile=config.compile, on_epoch_end=log("train"))  # fmt: skip
    acc_before, _ = evaluate(model, splits.test, config.amp)

    # The paper's rule, or a baseline's (trainers.pruning_rule); a uniform baseline prunes nothing.
    full_flops = reference_flops(config, model, input_shape, splits.num_classes)
    choice = choose(model, prunable_bns(model, config.prunable_set), config, input_shape, full_flops)
    threshold = choice.summary
    pruned = prune(model, choice.threshold, input_shape) if choice.threshold is not None else copy.deepcopy(model)
    acc_after_pruning, _ = evaluate(pruned, splits.test, config.amp)
    if config.finetune_epochs > 0:
        optimizer = make_optimizer(pruned, config, lr=config.finetune_lr, gamma_lr=config.finetune_lr)
        scheduler = make_scheduler(optimizer, config.finetune_schedule or config.lr_schedule, config.finetune_epochs,
                                   steps, config.finetune_milestones or config.lr_milestones,
                                   config.finetune_decay or config.lr_decay)  # fmt: skip
        train(pruned, splits.train, optimizer, scheduler, epochs=config.finetune_epochs,
              amp=config.amp, compile=config.compile, on_epoch_end=log("finetune"))  # fmt: skip
    if not is_lead():
        return None
    acc_after_finetune, _ = evaluate(pruned, splits.test, config.amp)

    flops_before, flops_after = full_flops, count_flops(pruned, input_shape)
    batch_sizes = sorted({1, config.eval_batch_size})
    deployed = [deploy(m) for m in (model, pruned)]
    latencies = {b: measure_latencies(deployed, input_shape, b, config.latency_runs, config.channels_last)
                 for b in batch_sizes}  # fmt: skip
    latency_before, latency_after = ({b: ms[i] for b, ms in latencies.items()} for i in (0, 1))
    flops_reduction = 1.0 - flops_after / flops_before

    example = next(iter(splits.test))[0][:2].detach().cpu().contiguous()
    model_path = output / EXPORT_NAME
    export(pruned, example, model_path)
    torch.save({k: v.cpu() for k, v in pruned.state_dict().items()}, output / "pruned_state_dict.pt")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, output / "model.pt")

    result = FinalResult(
        acc_before_pruning=acc_before, acc_after_pruning=acc_after_pruning, acc_after_finetune=acc_after_finetune,
        flops_before=flops_before, flops_after=flops_after, flops_reduction=flops_reduction,
        params_before=_params(model), params_after=_params(pruned), latency_ms_before=latency_before,
        latency_ms_after=latency_after, threshold=threshold, model_path=model_path, pruned_model=pruned,
        example_input=example, history=history,
    )  # fmt: skip
    _write_summary(result, config, lam, t, device, output / "final.json")
    return result


def deploy(model: nn.Module) -> nn.Module:
    """`model` as it is exported: an eval-mode copy with BN folded into the conv before it and the
    calls that compute nothing removed (`pruning.fold.for_inference`: the same function, 3-4 % less
    time at batch 1 on CPU, bench/speed_forms.py), or a plain eval-mode copy of a model torch.fx
    cannot trace."""
    try:
        return for_inference(model)
    except ValueError:
        return copy.deepcopy(model).eval()


def export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Save a CPU copy of `model` in eval mode, BN folded, as a torch.export program whose batch size is free."""
    module = deploy(copy.deepcopy(model).cpu()).to(memory_format=torch.contiguous_format)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (example.cpu(),), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)


def measure_latency(model: nn.Module, input_shape: Sequence[int], batch_size: int, runs: int,
                    channels_last: bool = False, warmup: int = 2) -> float:  # fmt: skip
    """Median milliseconds of one forward pass of a random batch, in eval mode on the model's device."""
    return measure_latencies([model], input_shape, batch_size, runs, channels_last, warmup)[0]


@torch.inference_mode()
def measure_latencies(models: Sequence[nn.Module], input_shape: Sequence[int], batch_size: int, runs: int,
                      channels_last: bool = False, warmup: int = 2) -> list[float]:  # fmt: skip
    """Median milliseconds of one forward pass of a random batch through each model (eval mode, on
    the first model's device), the models run in turn in every round (A B A B ...) so that a busy
    machine slows them alike and their ratio holds."""
    device = next(models[0].parameters()).device
    x = torch.randn(batch_size, *input_shape, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    modes = [m.training for m in models]
    times: list[list[float]] = [[] for _ in models]
    try:
        for m in models:
            m.eval()
        for i in range(warmup + runs):
            for model, own in zip(models, times, strict=True):
                sync()
                start = time.perf_counter()
                model(x)
                sync()
                if i >= warmup:
                    own.append(time.perf_counter() - start)
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    return [1000.0 * statistics.median(own) for own in times]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _write_summary(result: FinalResult, config: Config, lam: float, t: float, device: torch.device,
                   path: Path) -> None:  # fmt: skip
    summary = {"lam": lam, "t": t, "device": str(device), **result.summary(), "config": config.to_dict(),
               "history": result.history}  # fmt: skip
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(partial, path)
