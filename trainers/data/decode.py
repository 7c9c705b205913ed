"""Pixels: torchvision's pickled CIFAR batches, image files decoded in a thread pool, pooling.

Everything here yields uint8 N×3×H×W tensors; normalization and augmentation are the loaders'.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from trainers.data.folders import TORCHVISION_FOLDER, DataError, needs_download

_JPEG_SUFFIXES = (".jpg", ".jpeg")


@dataclass(frozen=True)
class Images:
    images: torch.Tensor  # uint8, N×3×H×W
    labels: torch.Tensor  # int64, N
    classes: list[str]


def read_cifar_batches(folder: Path, dataset: str, train: bool) -> Images:
    """torchvision's CIFAR files: pickled dicts of `data` (N×3072 uint8, channel-major) and labels."""
    if dataset == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        meta, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        names = ["train" if train else "test"]
        meta, label_key, names_key = "meta", "fine_labels", "fine_label_names"
    try:
        entries = []
        for name in names:
            with open(folder / name, "rb") as f:
                entries.append(pickle.load(f, encoding="latin1"))
        with open(folder / meta, "rb") as f:
            classes = list(pickle.load(f, encoding="latin1")[names_key])
    except (OSError, pickle.UnpicklingError, KeyError, EOFError) as error:
        raise DataError(f"cannot read CIFAR files in {folder}: {error}") from None
    images = torch.cat(
        [torch.as_tensor(e["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32) for e in entries]
    )
    labels = torch.cat([torch.as_tensor(e[label_key], dtype=torch.int64) for e in entries])
    return Images(images, labels, classes)


def download_cifar(dataset: str, root: Path) -> Path:
    """Fetch torchvision's CIFAR files into `root` (only when the user asked with download=True).

    A failed download raises DataError (one line) and leaves no folder it created behind.
    """
    import shutil

    from torchvision import datasets

    cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad archive a RuntimeError
        if created:
            shutil.rmtree(root, ignore_errors=True)
        reason = getattr(error, "reason", None) or str(error).splitlines()[0]
        raise DataError(f"could not download {dataset} into {root}: {reason}") from None
    return root / TORCHVISION_FOLDER[dataset]


def fetch(dataset: str, data_dir: str | os.PathLike) -> None:
    """Download `dataset` into `data_dir` unless the folder already holds it (--download)."""
    root = Path(data_dir).expanduser()
    if needs_download(dataset, root):
        download_cifar(dataset, root)


def decode_chunk(paths: Sequence[str]) -> list[torch.Tensor]:
    """Decode a chunk of files: JPEGs in one batched call, the rest one by one; when the batch fails,
    every file alone, so that a damaged one is named (an image is decoded by its content, whatever
    its name says: a PNG named .jpg is read as the PNG it is)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    datas = [_read(p) for p in paths]
    jpegs = [i for i, p in enumerate(paths) if p.lower().endswith(_JPEG_SUFFIXES)]
    out: list[torch.Tensor] = [torch.empty(0)] * len(paths)
    if jpegs:
        try:
            decoded = decode_jpeg([datas[i] for i in jpegs], mode=ImageReadMode.RGB)
        except RuntimeError:  # one of them is not a (whole) JPEG: each decoded alone below
            decoded = [None] * len(jpegs)
        for i, image in zip(jpegs, decoded, strict=True):
            out[i] = image if image is not None else _decode_one(paths[i], datas[i])
    for i in set(range(len(paths))) - set(jpegs):
        out[i] = _decode_one(paths[i], datas[i])
    return out


def _read(path: str) -> torch.Tensor:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise DataError(f"cannot read image {path}: {error.strerror or error}") from None
    if not data:
        raise DataError(f"cannot decode image {path}: the file is empty (0 bytes)")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _decode_one(path: str, data: torch.Tensor) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0].split(", ")[-1]  # drop torchvision's source location
        raise DataError(f"cannot decode image {path}: {reason}") from None


def decode(paths: Sequence[str], chunk: int = 1000) -> torch.Tensor:
    """Decode image files into one uint8 N×3×H×W tensor: batched decode_jpeg in a thread pool.

    Images whose size differs from the first one's are resized to it (bilinear, antialiased).
    """
    threads = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(decode_chunk, [paths[i : i + chunk] for i in range(0, len(paths), chunk)])
        images = [image for part in parts for image in part]
    size = images[0].shape[1:]
    for i, image in enumerate(images):
        if image.shape[1:] != size:
            resized = F.interpolate(image[None].float(), size=tuple(size), mode="bilinear", antialias=True)
            images[i] = resized[0].round().clamp(0, 255).to(torch.uint8)
    return torch.stack(images)


def downsample_images(images: torch.Tensor, factor: int, chunk: int = 8192) -> torch.Tensor:
    """Average-pool uint8 images by `factor` (rounded back to uint8), a chunk at a time."""
    if factor == 1:
        return images
    parts = [
        F.avg_pool2d(images[i : i + chunk].float(), factor).round_().to(torch.uint8)
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(parts)
