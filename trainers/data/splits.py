"""`load`, the one door: the train / val / test loaders of a dataset by name (see the package docstring)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainers.data.cache import decode_cached, resolve_cache_dir
from trainers.data.decode import Images, download_cifar, downsample_images, read_cifar_batches
from trainers.data.folders import (
    DataError,
    Files,
    check,
    fits_in_memory,
    needs_download,
    torchvision_root,
    tree_files,
)
from trainers.data.loaders import CIFAR_PAD, FileDataset, StreamLoader, TensorLoader, stream_transforms
from trainers.data.stratify import stratified_split

# Per-channel mean and std of the training images (CIFAR-10: measured on the shared JPEG copy).
_STATS = {
    "cifar10": ((0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class Splits:
    """The loaders of one dataset; `val` is None when no validation split was asked for."""

    train: TensorLoader | StreamLoader
    val: TensorLoader | StreamLoader | None
    test: TensorLoader | StreamLoader
    num_classes: int
    input_shape: tuple[int, int, int]
    classes: list[str]


def load(
    dataset: str,
    data_dir: str | os.PathLike,
    *,
    subset: int | None = None,
    val_size: int = 0,
    seed: int = 0,
    downsample: int = 1,
    download: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    eval_batch_size: int = 512,
    num_workers: int = 4,
    cache_dir: str | os.PathLike | None = None,
    channels_last: bool = False,
) -> Splits:
    """The train / val / test loaders of `dataset` in `data_dir` (see the package docstring).

    `subset`: stratified number of training images (None: all); `val_size`: stratified held-out
    images of the training set, disjoint from the training ones; `downsample`: integer factor of
    average pooling applied once at load time; `cache_dir` (default `$POLARSEARCH_CACHE` or
    `~/.cache/polarsearch`): where decoded ImageFolder trees are cached.
    """
    check(dataset, data_dir, download)
    for name, value, low in (
        ("subset", 1 if subset is None else subset, 1),
        ("val_size", val_size, 0),
        ("downsample", downsample, 1),
        ("batch_size", batch_size, 1),
        ("eval_batch_size", eval_batch_size, 1),
    ):
        if int(value) != value or value < low:
            raise DataError(f"{name} must be an integer >= {low}, got {value}")
    root, device = Path(data_dir).expanduser(), torch.device(device)
    stats = _STATS[dataset]
    folder = torchvision_root(dataset, root)
    if download and needs_download(dataset, root):
        folder = download_cifar(dataset, root)
    if folder is not None:
        train_set, test_set = (read_cifar_batches(folder, dataset, train) for train in (True, False))
    else:
        train_files, test_files = tree_files(root, dataset)
        if not fits_in_memory(train_files):
            return _stream_splits(train_files, test_files, stats, subset, val_size, seed, downsample, device,
                                  batch_size, eval_batch_size, num_workers, channels_last)  # fmt: skip
        cache = resolve_cache_dir(cache_dir)
        train_set, test_set = decode_cached(train_files, cache), decode_cached(test_files, cache)
    train_idx, val_idx = stratified_split(train_set.labels, val_size, subset, seed)
    if min(train_set.images.shape[-2:]) < downsample:
        raise DataError(
            f"downsample {downsample} is larger than the {train_set.images.shape[-1]}-pixel images"
        )

    def loader(images: Images, idx: torch.Tensor | None, train: bool) -> TensorLoader:
        whole = idx is None or len(idx) == len(images.labels)  # no copy of the whole set
        x, y = (images.images, images.labels) if whole else (images.images[idx], images.labels[idx])
        x = downsample_images(x, downsample).to(device)
        return TensorLoader(
            x,
            y.to(device),
            stats,
            batch_size if train else eval_batch_size,
            train=train,
            pad=max(1, CIFAR_PAD // downsample),
            seed=seed,
            channels_last=channels_last,
        )

    train = loader(train_set, train_idx, True)
    return Splits(
        train=train,
        val=loader(train_set, val_idx, False) if val_size else None,
        test=loader(test_set, None, False),
        num_classes=len(train_set.classes),
        input_shape=(3, *train.images.shape[-2:]),
        classes=list(train_set.classes),
    )


def _stream_splits(train_files: Files, test_files: Files, stats: Any, subset: int | None, val_size: int,
                   seed: int, downsample: int, device: torch.device, batch_size: int, eval_batch_size: int,
                   num_workers: int, channels_last: bool) -> Splits:  # fmt: skip
    """Splits of a large tree: file lists split as for small ones, decoded on the fly by workers."""
    train_tf, eval_tf, shape = stream_transforms(stats, downsample)
    train_idx, val_idx = stratified_split(torch.tensor(train_files.labels), val_size, subset, seed)

    def loader(files: Files, idx: torch.Tensor | None, transform, train: bool) -> StreamLoader:
        idx = range(len(files.paths)) if idx is None else idx.tolist()
        dataset = FileDataset([files.paths[i] for i in idx], [files.labels[i] for i in idx], transform)
        return StreamLoader(
            dataset,
            batch_size if train else eval_batch_size,
            train=train,
            num_workers=num_workers,
            seed=seed,
            device=device,
            channels_last=channels_last,
        )

    return Splits(
        train=loader(train_files, train_idx, train_tf, True),
        val=loader(train_files, val_idx, eval_tf, False) if val_size else None,
        test=loader(test_files, None, eval_tf, False),
        num_classes=len(train_files.classes),
        input_shape=shape,
        classes=list(train_files.classes),
    )
