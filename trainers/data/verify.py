"""The data check made before anything trains: the data as the trials will read it, or one line.

    verify("imagefolder", "data/", subset=1000, val_size=500, downsample=4)

Bad data found inside the trials costs every trial and its retries; found here it costs one line.
The tree's classes are checked (at least two, none empty, the same in train/ and test/); the small
trees held in memory are decoded whole, file by file where a batch fails, into the decode cache the
trials then read (so the check is paid once); large streamed trees are checked on a sample, and a
damaged file met later stops its trial with the file named. The policy for an unreadable file is to
stop, naming it: no image is skipped silently. Last, the sizes asked for (`subset`, `val_size`,
`downsample`) must fit the data.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from trainers.data.cache import decode_cached, resolve_cache_dir
from trainers.data.decode import decode_chunk, read_cifar_batches
from trainers.data.folders import (
    DataError,
    check,
    check_classes,
    fits_in_memory,
    torchvision_root,
    tree_files,
)
from trainers.data.stratify import stratified_split

SAMPLE = 256  # files decoded from a streamed tree


def verify(dataset: str, data_dir: str | os.PathLike, *, subset: int | None = None, val_size: int = 0,
           downsample: int = 1, seed: int = 0, cache_dir: str | os.PathLike | None = None,
           sample: int = SAMPLE) -> None:  # fmt: skip
    """Raise DataError (one line) unless the trials can train on `dataset` in `data_dir` as asked."""
    check(dataset, data_dir)
    root = Path(data_dir).expanduser()
    folder = torchvision_root(dataset, root)
    if folder is not None:
        labels, side = read_cifar_batches(folder, dataset, True).labels, 32
        read_cifar_batches(folder, dataset, False)
    else:
        train, test = tree_files(root, dataset)
        check_classes(train, test)
        if fits_in_memory(train):
            cache = resolve_cache_dir(cache_dir)
            images = decode_cached(train, cache)
            decode_cached(test, cache)
            labels, side = images.labels, min(images.images.shape[-2:])
        else:
            paths = train.paths + test.paths
            decode_chunk(random.Random(seed).sample(paths, min(sample, len(paths))))
            labels, side = torch.tensor(train.labels), 224
    stratified_split(labels, val_size, subset, seed)
    if side < downsample:
        raise DataError(f"downsample {downsample} is larger than the {side}-pixel images")
