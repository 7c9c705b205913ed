"""The GPU checks of bench/gpu.sh: training options timed, and pruned = masked on the device.

    PYTHONPATH=. python bench/gpu_checks.py train --device cuda --epochs 2 --json bench/results/gpu_train.json
    PYTHONPATH=. python bench/gpu_checks.py equivalence --device cuda

`train`: the trial's loop (`trainers.loop.train`, polarization penalty on) on cifar10-resnet56 with
each GPU option (plain, bf16 autocast, channels_last, torch.compile, all three), on synthetic
CIFAR-sized tensors already on the device: seconds per epoch, images/s, peak memory.
`equivalence`: every registered model (and torchvision's resnet50 and mobilenet_v2) pruned on the
device gives the masked model's output (1e-4 of the largest logit, TF32 off; the eager check of
tests/pruning/test_surgery.py, without pytest, which the GPU machine may not have).
Needs torch (>= 2.11) and torchvision only: no Ray, MLflow, Optuna or data set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

if "yaml" not in sys.modules:  # trainers.config imports PyYAML for presets; the loop never reads one
    try:
        import yaml  # noqa: F401
    except ImportError:
        sys.modules["yaml"] = types.ModuleType("yaml")

from pruning.prunable import prunable_bns, scaling_factors  # noqa: E402
from pruning.surgery import masked, prune  # noqa: E402
from trainers.config import Config  # noqa: E402
from trainers.loop import Penalty, make_optimizer, make_scheduler, train  # noqa: E402
from trainers.models import available, build, input_size  # noqa: E402

OPTIONS = {"plain": {}, "amp": {"amp": True}, "channels_last": {"channels_last": True},
           "compile": {"compile": True}, "all": {"amp": True, "channels_last": True, "compile": True}}  # fmt: skip


def trial(device: torch.device, option: dict, epochs: int, images: int, batch: int) -> dict:
    torch.manual_seed(0)
    model = build("resnet56", num_classes=10).to(device)
    memory = torch.channels_last if option.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=memory)
    gammas = scaling_factors(model)
    batches = [(torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory),
                torch.randint(0, 10, (batch,), device=device)) for _ in range(max(1, images // batch))]  # fmt: skip
    config = Config(lr=0.1)
    optimizer = make_optimizer(model, config, gammas=gammas)
    scheduler = make_scheduler(optimizer, "cosine", epochs, len(batches))
    penalty = Penalty("polarization", lam=1e-4, t=1.2, upper=1.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats = train(model, batches, optimizer, scheduler, epochs=epochs, penalty=penalty, gammas=gammas,
                  amp=option.get("amp", False), compile=option.get("compile", False))  # fmt: skip
    last = stats[-1]  # the first epoch pays for compiling
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"s_per_epoch": [s["seconds"] for s in stats], "images_per_s": last["images_per_s"],
            "peak_memory_mib": peak, "loss": last["loss"]}  # fmt: skip


def run_train(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    results = {}
    for name in args.options:
        started = time.perf_counter()
        results[name] = trial(device, OPTIONS[name], args.epochs, args.images, args.batch_size)
        r = results[name]
        print(f"{name:>14}: s/epoch {', '.join(f'{s:.2f}' for s in r['s_per_epoch'])}  "
              f"{r['images_per_s']:.0f} img/s  peak {r['peak_memory_mib']:.0f} MiB  loss {r['loss']:.3f}  "
              f"({time.perf_counter() - started:.0f} s in all)", flush=True)  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
        args.json.write_text(json.dumps({**meta, "epochs": args.epochs, "images": args.images, "results": results},
                                        indent=1) + "\n")  # fmt: skip


@torch.no_grad()
def polarize_(model: torch.nn.Module, shape: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for bn in prunable_bns(model):
        n = bn.num_features
        low = torch.rand(n, generator=g) < 0.4
        bn.weight.copy_(torch.where(low, 0.05 * torch.rand(n, generator=g), 0.3 + 0.7 * torch.rand(n, generator=g)))
        bn.bias.copy_(0.1 * torch.randn(n, generator=g))
    model.train()(torch.randn(8, *shape, generator=g).to(next(model.parameters()).device))
    return model.eval()


def run_equivalence(args: argparse.Namespace) -> None:
    import torchvision

    torch.backends.cudnn.allow_tf32 = False  # the check is of the surgery, not of TF32's rounding
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(args.device)
    nets = {name: (lambda n=name: build(n, num_classes=10), min(input_size(name), 32)) for name in available()}
    nets.update({f"torchvision.{n}": (getattr(torchvision.models, n), 32) for n in ("resnet50", "mobilenet_v2")})
    failed = []
    for name, (make, side) in nets.items():
        shape = (3, side, side)
        model = polarize_(make().to(device), shape)
        pruned = prune(model, 0.1, shape)
        x = torch.randn(4, *shape, device=device)
        with torch.no_grad():
            want = masked(model, 0.1).eval()(x)
        with torch.inference_mode():  # the residual additions run in place
            got = pruned.eval()(x)
        error = float((got - want).abs().max() / want.abs().max())
        on_device = all(t.device.type == device.type for t in [*pruned.parameters(), *pruned.buffers()])
        ok = error <= 1e-4 and on_device
        print(f"{name:>24}: pruned vs masked {error:.1e} of the largest logit, on {device.type}: {on_device}  "
              f"{'ok' if ok else 'FAILED'}")  # fmt: skip
        failed += [] if ok else [name]
    if failed:
        raise SystemExit(f"pruned != masked on {device}: {', '.join(failed)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=["train", "equivalence"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=50_000, help="synthetic images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    run_train(args) if args.check == "train" else run_equivalence(args)


if __name__ == "__main__":
    main()
