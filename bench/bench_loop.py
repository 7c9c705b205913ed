"""Cost of the polarization regularizer in the training loop: a plain step vs a step with λ·R(γ) + clamp.

    python bench/bench_loop.py [--model resnet20] [--batch-size 128] [--threads 2] [--steps 12] [--rounds 5]

Both runs go through `trainers.loop.train` on the same model, the same random batches and the
same number of steps, alternated round by round so that a busy machine slows both alike; the
ratio is the median regularized epoch time over the median plain one (the issue's target:
within 1.03). The regularizer alone (R(γ) over all γ, its backward and the clamp) is also timed
in isolation, as a fraction of a plain step, which is the less noisy figure on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pruning.prunable import scaling_factors
from pruning.regularizers import clamp_, init_scaling_factors_
from trainers import models
from trainers.config import Config
from trainers.loop import Penalty, make_optimizer, make_scheduler, train


def epoch_seconds(model: torch.nn.Module, gammas: list[torch.Tensor], batches: list, penalty: Penalty | None) -> float:
    optimizer = make_optimizer(model, Config(lr=0.01))
    scheduler = make_scheduler(optimizer, "cosine", 1, len(batches))
    start = time.perf_counter()
    train(model, batches, optimizer, scheduler, epochs=1, penalty=penalty, gammas=gammas)
    return time.perf_counter() - start


def regularizer_seconds(gammas: list[torch.Tensor], penalty: Penalty, repeats: int = 200) -> float:
    """One step's worth of regularizer work: λ·R(γ), its backward and the clamp."""
    start = time.perf_counter()
    for step in range(repeats):
        penalty(gammas, step).backward()
        clamp_(gammas, penalty.upper)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="steps per timed epoch")
    parser.add_argument("--rounds", type=int, default=5, help="alternated plain/regularized epochs")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.build(args.model, num_classes=10)
    gammas = scaling_factors(model)
    init_scaling_factors_(gammas)
    size = args.image_size
    batches = [(torch.randn(args.batch_size, 3, size, size), torch.randint(0, 10, (args.batch_size,)))
               for _ in range(args.steps)]  # fmt: skip
    penalty = Penalty("polarization", lam=1e-4, t=1.2, upper=1.0)

    epoch_seconds(model, gammas, batches[:2], None)  # warm-up: allocator, kernels
    plain, regularized = [], []
    for _ in range(args.rounds):
        plain.append(epoch_seconds(model, gammas, batches, None))
        regularized.append(epoch_seconds(model, gammas, batches, penalty))
    plain_step = statistics.median(plain) / args.steps
    regularized_step = statistics.median(regularized) / args.steps
    alone = regularizer_seconds(gammas, penalty)

    print(f"{args.model}, batch {args.batch_size}, {size}x{size}, {args.threads} threads, "
          f"{sum(g.numel() for g in gammas)} scaling factors in {len(gammas)} BN layers")  # fmt: skip
    print(f"plain step:        {1000 * plain_step:8.2f} ms (median of {args.rounds} epochs of {args.steps} steps)")
    print(f"regularized step:  {1000 * regularized_step:8.2f} ms")
    print(f"regularizer alone: {1000 * alone:8.3f} ms = {100 * alone / plain_step:.2f} % of a plain step")
    print(f"overhead ratio (regularized / plain): {regularized_step / plain_step:.4f}")


if __name__ == "__main__":
    main()
