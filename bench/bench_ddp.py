"""Data-parallel scaling: images/s of the one training loop on 1 vs W Ray Train workers (issue 16).

    python bench/bench_ddp.py [--quick] [--workers 2] [--model resnet20] [--batch-size 128]
                              [--image-size 32] [--steps 8] [--epochs 3] [--gpu] [--out FILE]

Each run is a `TorchTrainer` of W workers (gloo on CPU with one torch thread each, nccl with one
GPU each under --gpu) training `--model` with λ·R(γ) on random images through
`trainers.loop.train`, the global batch split over the workers (trainers.distributed); the rate
is the loop's own `images_per_s` over all workers, the median over the epochs after the first
(which pays for start-up). 1 and W workers run in turn; the row is their ratio.

On a 2-core machine this is no scaling test: two processes of one thread share the cores with
everything else, and the all-reduce of every step is pure overhead. The row says what it is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

RESULT = Path(__file__).resolve().parent / "results" / "ddp-cpu.json"


def _worker(cfg: dict) -> None:
    """One worker: the bench's training run on its shard; rank 0 writes the per-epoch stats."""
    import ray.train

    from pruning.prunable import scaling_factors
    from pruning.regularizers import init_scaling_factors_
    from trainers import distributed, loop, models
    from trainers.config import Config
    from trainers.data.loaders import TensorLoader

    torch.set_num_threads(1)
    device = ray.train.torch.get_device() if cfg["gpu"] else torch.device("cpu")
    torch.manual_seed(0)
    model = models.build(cfg["model"], num_classes=10).to(device)
    gammas = scaling_factors(model)
    init_scaling_factors_(gammas)
    n, size = cfg["batch_size"] * cfg["steps"], cfg["image_size"]
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (n,), device=device)
    loader = distributed.shard(TensorLoader(images, labels, ((0.5,) * 3, (0.25,) * 3), cfg["batch_size"], train=True))
    config = Config(lr=0.05)
    optimizer = loop.make_optimizer(model, config, gammas=gammas)
    scheduler = loop.make_scheduler(optimizer, "cosine", cfg["epochs"], len(loader))
    penalty = loop.make_penalty(config, 1e-4, 1.2, len(loader))
    history = loop.train(model, loader, optimizer, scheduler, epochs=cfg["epochs"], penalty=penalty, gammas=gammas)
    if ray.train.get_context().get_world_rank() == 0:
        Path(cfg["out"]).write_text(json.dumps(history))


def images_per_s(workers: int, args: argparse.Namespace, folder: Path) -> float:
    import ray.train
    from ray.train.torch import TorchTrainer

    out = folder / f"w{workers}.json"
    cfg = {**vars(args), "out": str(out)}
    per_worker = {"CPU": 1, **({"GPU": 1} if args.gpu else {})}
    scaling = ray.train.ScalingConfig(num_workers=workers, use_gpu=args.gpu, resources_per_worker=per_worker)
    run = ray.train.RunConfig(name=f"bench-{workers}", storage_path=str(folder / "ray"))
    TorchTrainer(_worker, train_loop_config=cfg, scaling_config=scaling, run_config=run).fit()
    history = json.loads(out.read_text())
    return statistics.median(h["images_per_s"] for h in history[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet20 at 16x16, batch 64, 4 steps, 3 epochs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="global steps per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (nccl)")
    parser.add_argument("--out", type=Path, default=None, help=f"write the row here (default {RESULT.name} on CPU)")
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.batch_size, args.steps, args.epochs = 16, 64, 4, 3

    import ray

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from search.ray_cluster import ray_session

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp, ray_session(num_cpus=max(cpus, args.workers)):
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        one = images_per_s(1, args, Path(tmp))
        many = images_per_s(args.workers, args, Path(tmp))
    row = {"model": args.model, "image_size": args.image_size, "global_batch": args.batch_size,
           "device": "cuda" if args.gpu else "cpu", "threads_per_worker": 1, "cpus": cpus,
           "load_average": os.getloadavg()[0], "images_per_s_1": round(one, 1),
           f"images_per_s_{args.workers}": round(many, 1), "ratio": round(many / one, 3),
           "workers": args.workers, "quick": args.quick}  # fmt: skip
    print(f"{args.model} {args.image_size}px, global batch {args.batch_size}, {row['device']}: "
          f"1 worker {one:.0f} img/s, {args.workers} workers {many:.0f} img/s, ratio {many / one:.2f} "
          f"({cpus} cores, load {row['load_average']:.1f})")
    out = args.out or (None if args.gpu else RESULT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
