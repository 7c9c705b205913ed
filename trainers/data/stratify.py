"""Stratified splits: a training subset and a held-out validation split, equal per class."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from trainers.data.folders import DataError


def _allocate(n: int, capacity: Sequence[int], generator: torch.Generator) -> list[int]:
    """Split n over classes as equally as their capacities allow; leftover units to random classes."""
    alloc = [0] * len(capacity)
    active = [k for k, c in enumerate(capacity) if c > 0]
    while n > 0:
        share = n // len(active)
        if share == 0:
            for i in torch.randperm(len(active), generator=generator)[:n].tolist():
                alloc[active[i]] += 1
            break
        for k in active:
            take = min(share, capacity[k] - alloc[k])
            alloc[k] += take
            n -= take
        active = [k for k in active if alloc[k] < capacity[k]]
    return alloc


def stratified_split(
    labels: torch.Tensor, val_size: int, subset: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) sample indices, disjoint: `val_size` then `subset` (None: all the rest) drawn
    per class from one seeded shuffle of each class, as equal per class as possible."""
    n = len(labels)
    if subset is None and val_size >= n:
        raise DataError(f"val_size {val_size} leaves none of the {n} training images to train on")
    if subset is not None and val_size + subset > n:
        raise DataError(f"val_size {val_size} + subset {subset} is more than the {n} training images")
    if subset is None and val_size == 0:
        return torch.arange(n), torch.arange(0)
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(n, generator=generator)
    by_class = shuffled[torch.sort(labels[shuffled], stable=True).indices]  # grouped, random within
    counts = torch.bincount(labels).tolist()
    starts = [0, *itertools.accumulate(counts)]
    val_alloc = _allocate(val_size, counts, generator)
    rest = [c - v for c, v in zip(counts, val_alloc, strict=True)]
    train_alloc = rest if subset is None else _allocate(subset, rest, generator)
    val = torch.cat([by_class[s : s + v] for s, v in zip(starts[:-1], val_alloc, strict=True)])
    train = torch.cat(
        [by_class[s + v : s + v + t] for s, v, t in zip(starts[:-1], val_alloc, train_alloc, strict=True)]
    )
    return train.sort().values, val.sort().values
