"""Training speed fed by the data pipeline vs fed by random tensors of the same shape.

    python bench/bench_data.py [--data-dir DIR] [--model resnet20] [--batch-size 128] [--threads 2]

Prints the images/s of forward + backward + SGD step on random tensors, the same on batches of
`trainers.data.load(...).train` (decoded, augmented, normalized), their ratio (target ≥ 0.9, the
issue's "within 10 %"), and the loader alone. The two are measured in alternating rounds and the
median round is reported, so load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from trainers.data import load
from trainers.models import build


def default_data_dir() -> str:
    configured = os.environ.get("POLARSEARCH_TEST_DATA")
    return configured or str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10")


def batches_forever(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


def seconds_per_step(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    start = time.perf_counter()
    splits = load(args.dataset, args.data_dir, batch_size=args.batch_size)
    print(
        f"load {args.dataset}: {time.perf_counter() - start:.2f} s, train {splits.train.num_samples} images"
    )
    model = build(args.model, splits.num_classes).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    random_x = torch.randn(args.batch_size, *splits.input_shape)
    random_y = torch.randint(0, splits.num_classes, (args.batch_size,))
    data = batches_forever(splits.train)
    data_only = batches_forever(splits.train)

    for _ in range(3):  # warm-up: allocator, kernels, the loader's first epoch
        train_step(random_x, random_y)
        train_step(*next(data))
    random_s, loader_s, alone_s = [], [], []
    for _ in range(args.rounds):
        random_s.append(seconds_per_step(lambda: train_step(random_x, random_y), args.steps))
        loader_s.append(seconds_per_step(lambda: train_step(*next(data)), args.steps))
        alone_s.append(seconds_per_step(lambda: next(data_only), args.steps * 10))

    b = args.batch_size
    random_ips, loader_ips = b / statistics.median(random_s), b / statistics.median(loader_s)
    print(
        f"{args.model}, batch {b}, {args.threads} threads, median of {args.rounds} rounds x {args.steps} steps"
    )
    print(f"  random tensors : {random_ips:9.1f} img/s (forward + backward + step)")
    print(f"  data pipeline  : {loader_ips:9.1f} img/s (forward + backward + step)")
    print(f"  ratio          : {loader_ips / random_ips:9.3f}  (target >= 0.90)")
    print(
        f"  loader alone   : {b / statistics.median(alone_s):9.1f} img/s (decode-free batches: gather, augment, normalize)"
    )


if __name__ == "__main__":
    main()
