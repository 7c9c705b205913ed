"""Datasets by name for the trainers: CIFAR-10/100 and ImageFolder trees, as batch loaders (§4).

`load(dataset, data_dir)` gives the train / validation / test loaders of one dataset. A data
folder holds either torchvision's CIFAR files (`cifar-10-batches-py`, `cifar-100-python`) or an
ImageFolder tree (`train/<class>/*.jpg` and `test/` or `val/`); which one is detected.

Small datasets (CIFAR, and trees of images up to 64×64) are decoded once into a uint8 tensor
N×3×H×W held in memory (on the GPU when `device` is one) and cached decoded on disk, so the
60,000 JPEG files of CIFAR-10 cost seconds once and a fraction of a second afterwards. Their
augmentation — the random crop with 4-pixel zero padding and the horizontal flip of the paper's
CIFAR training (§4.1) — runs on whole batches as tensor operations. Large trees (ImageNet)
stream through DataLoader workers with the standard RandomResizedCrop / Resize(256) +
CenterCrop(224) transforms (§4.2). Both kinds of loader yield (normalized float32 NCHW images,
int64 labels) on `device`, have `len()` = batches per epoch and `.num_samples`.

`subset` draws a stratified training subset and `val_size` a stratified held-out validation
split from the training images (the trial's accuracy, Algorithm 1); the test split is `test/`
(or `val/`). `downsample` average-pools the images once at load time (2 gives 16×16 CIFAR).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

DATASETS = ("cifar10", "cifar100", "imagefolder")

# Per-channel mean and std of the training images (CIFAR-10: measured on the shared JPEG copy).
_STATS = {
    "cifar10": ((0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_TORCHVISION_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_JPEG_SUFFIXES = (".jpg", ".jpeg")
# Trees of images up to this side, and this many bytes decoded, are held in memory.
_IN_MEMORY_MAX_SIDE = 64
_IN_MEMORY_MAX_BYTES = 4 << 30
_CIFAR_PAD = 4
_CACHE_VERSION = 1


class DataError(ValueError):
    """A data folder or dataset name the user gave cannot be used; the message is one line."""


@dataclass(frozen=True)
class Splits:
    """The loaders of one dataset; `val` is None when no validation split was asked for."""

    train: TensorLoader | StreamLoader
    val: TensorLoader | StreamLoader | None
    test: TensorLoader | StreamLoader
    num_classes: int
    input_shape: tuple[int, int, int]
    classes: list[str]


@dataclass(frozen=True)
class _Images:
    images: torch.Tensor  # uint8, N×3×H×W
    labels: torch.Tensor  # int64, N
    classes: list[str]


@dataclass(frozen=True)
class _Files:
    root: Path
    paths: list[str]
    labels: list[int]
    classes: list[str]


# ---------------------------------------------------------------------------------------------
# Checking and finding the data


def check(dataset: str, data_dir: str | os.PathLike, download: bool = False) -> None:
    """Raise `DataError` (one line) if `dataset` is unknown or `data_dir` is missing or empty."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    root = Path(data_dir).expanduser()
    torchvision_name = _TORCHVISION_FOLDER.get(dataset)
    if _torchvision_root(dataset, root) is not None:
        return
    if download and torchvision_name and not (root / "train").is_dir():
        return  # torchvision's files will be fetched into it
    if not root.is_dir():
        hint = " (pass --download to fetch it)" if torchvision_name else ""
        raise DataError(f"data folder {root} does not exist{hint}")
    if not any(root.iterdir()):
        raise DataError(f"data folder {root} is empty")
    if not (root / "train").is_dir():
        expected = f"torchvision's {torchvision_name}/ nor " if torchvision_name else ""
        raise DataError(f"data folder {root} holds neither {expected}an ImageFolder train/ folder")
    if _eval_folder(root) is None:
        raise DataError(f"data folder {root} has train/ but no test/ or val/ folder")
    for folder in (root / "train", _eval_folder(root)):
        if not _has_image(folder):
            raise DataError(f"{folder} holds no class folders with images")


def _torchvision_root(dataset: str, root: Path) -> Path | None:
    """The folder of torchvision's pickled CIFAR batches under (or at) `root`, if there is one."""
    name = _TORCHVISION_FOLDER.get(dataset)
    if name is None:
        return None
    marker = "data_batch_1" if dataset == "cifar10" else "train"
    for folder in (root / name, root):
        if (folder / marker).is_file():
            return folder
    return None


def _eval_folder(root: Path) -> Path | None:
    return next((root / n for n in ("test", "val") if (root / n).is_dir()), None)


def _is_image(name: str) -> bool:
    return name.lower().endswith(_IMAGE_SUFFIXES)


def _has_image(folder: Path) -> bool:
    for entry in os.scandir(folder):
        if entry.is_dir() and any(_is_image(e.name) and e.is_file() for e in os.scandir(entry.path)):
            return True
    return False


def _scan(folder: Path) -> _Files:
    """The image files of an ImageFolder split: classes are its sub-folders, sorted (label order)."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(e.path for e in os.scandir(folder / name) if _is_image(e.name) and e.is_file())
        paths += files
        labels += [label] * len(files)
    return _Files(folder, paths, labels, classes)


# ---------------------------------------------------------------------------------------------
# Decoding, with an on-disk cache of the decoded tensors


def _read_cifar_batches(folder: Path, dataset: str, train: bool) -> _Images:
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
    return _Images(images, labels, classes)


def _download_cifar(dataset: str, root: Path) -> Path:
    """Fetch torchvision's CIFAR files into `root` (only when the user asked with download=True)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        cls(str(root), train=train, download=True)
    return root / _TORCHVISION_FOLDER[dataset]


def _decode_chunk(paths: Sequence[str]) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    datas = []
    for p in paths:
        with open(p, "rb") as f:
            datas.append(torch.frombuffer(bytearray(f.read()), dtype=torch.uint8))
    jpegs = [i for i, p in enumerate(paths) if p.lower().endswith(_JPEG_SUFFIXES)]
    out: list[torch.Tensor] = [torch.empty(0)] * len(paths)
    try:
        if jpegs:
            decoded = decode_jpeg([datas[i] for i in jpegs], mode=ImageReadMode.RGB)
            for i, image in zip(jpegs, decoded, strict=True):
                out[i] = image
        for i in set(range(len(paths))) - set(jpegs):
            out[i] = decode_image(datas[i], mode=ImageReadMode.RGB)
    except RuntimeError:
        for p, data in zip(paths, datas, strict=True):  # find the file that does not decode
            try:
                decode_image(data, mode=ImageReadMode.RGB)
            except RuntimeError as error:
                reason = (
                    str(error).strip().splitlines()[0].split(", ")[-1]
                )  # drop torchvision's source location
                raise DataError(f"cannot decode image {p}: {reason}") from None
        raise
    return out


def _decode(paths: Sequence[str], chunk: int = 1000) -> torch.Tensor:
    """Decode image files into one uint8 N×3×H×W tensor: batched decode_jpeg in a thread pool.

    Images whose size differs from the first one's are resized to it (bilinear, antialiased).
    """
    threads = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(_decode_chunk, [paths[i : i + chunk] for i in range(0, len(paths), chunk)])
        images = [image for part in parts for image in part]
    size = images[0].shape[1:]
    for i, image in enumerate(images):
        if image.shape[1:] != size:
            resized = F.interpolate(image[None].float(), size=tuple(size), mode="bilinear", antialias=True)
            images[i] = resized[0].round().clamp(0, 255).to(torch.uint8)
    return torch.stack(images)


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir or os.environ.get("POLARSEARCH_CACHE") or "~/.cache/polarsearch").expanduser()


def _source_key(files: _Files) -> str:
    """The identity of a folder's contents: its path, file count, newest mtime and total size."""
    newest = total = 0
    for path in [*files.paths, *(str(files.root / c) for c in files.classes)]:
        stat = os.stat(path)
        newest, total = max(newest, stat.st_mtime_ns), total + stat.st_size
    text = f"v{_CACHE_VERSION}|{files.root.resolve()}|{len(files.paths)}|{newest}|{total}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _decode_cached(files: _Files, cache_dir: Path) -> _Images:
    """The decoded images of `files`, from the on-disk cache when the folder has not changed."""
    cache = cache_dir / f"{files.root.parent.name}-{files.root.name}-{_source_key(files)}.pt"
    if cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            return _Images(saved["images"], saved["labels"], list(saved["classes"]))
        except Exception:  # a broken cache file is decoded again and rewritten
            pass
    images = _Images(_decode(files.paths), torch.tensor(files.labels, dtype=torch.int64), files.classes)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        torch.save({"images": images.images, "labels": images.labels, "classes": images.classes}, partial)
        os.replace(partial, cache)
    except OSError:
        pass  # an unwritable cache only costs the decoding again next time
    return images


def _fits_in_memory(files: _Files) -> bool:
    from PIL import Image

    with Image.open(files.paths[0]) as image:  # reads the header only
        width, height = image.size
    return (
        max(width, height) <= _IN_MEMORY_MAX_SIDE
        and len(files.paths) * 3 * width * height <= _IN_MEMORY_MAX_BYTES
    )


def _downsample(images: torch.Tensor, factor: int, chunk: int = 8192) -> torch.Tensor:
    """Average-pool uint8 images by `factor` (rounded back to uint8), a chunk at a time."""
    if factor == 1:
        return images
    parts = [
        F.avg_pool2d(images[i : i + chunk].float(), factor).round_().to(torch.uint8)
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(parts)


# ---------------------------------------------------------------------------------------------
# Stratified splits


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


def _stratified_split(
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


# ---------------------------------------------------------------------------------------------
# Loaders


def augment(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop with `pad` pixels of zero padding and random horizontal flip of a uint8 batch.

    The crop and the flip are one gather over the padded batch: output pixel (i, j) of image b is
    padded pixel (dy_b + i, dx_b + j), or (dy_b + i, dx_b + W − 1 − j) when b is flipped.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
    j = torch.arange(w, device=images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)
    cols = dx[:, None] + torch.where(flip[:, None], j.flip(0), j)
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, -1).gather(2, index).view(b, c, h, w)


class TensorLoader:
    """Batches of an in-memory uint8 image tensor, normalized to float32 on its device.

    For training it reshuffles and augments every epoch from a seeded generator (reproducible) and
    drops the last incomplete batch; otherwise it keeps the order and every sample.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        stats: tuple[Sequence[float], Sequence[float]],
        batch_size: int,
        *,
        train: bool,
        pad: int = _CIFAR_PAD,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.pad, self.channels_last = batch_size, train, pad, channels_last
        mean, std = (
            torch.tensor(s, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) for s in stats
        )
        self._scale, self._shift = 1.0 / (255.0 * std), mean / std
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return max(1, n // b) if self.train else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b = self.num_samples, self.batch_size
        if self.train:
            order = torch.randperm(n, generator=self._generator).to(self.images.device)
        for i in range(len(self)):
            if self.train:
                idx = order[i * b : (i + 1) * b]
                x, y = augment(self.images[idx], self.pad, self._generator), self.labels[idx]
            else:
                x, y = self.images[i * b : (i + 1) * b], self.labels[i * b : (i + 1) * b]
            x = x.float().mul_(self._scale).sub_(self._shift)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


class _FileDataset(Dataset):
    """Image files opened with PIL and transformed, for DataLoader workers."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


class StreamLoader:
    """Batches of a large image tree decoded by DataLoader workers, moved to `device`."""

    def __init__(
        self,
        dataset: _FileDataset,
        batch_size: int,
        *,
        train: bool,
        num_workers: int,
        seed: int,
        device: torch.device,
        channels_last: bool = False,
    ) -> None:
        self.labels = torch.tensor(list(dataset.labels), dtype=torch.int64)
        self.batch_size, self.device, self.channels_last = batch_size, device, channels_last
        self._loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > batch_size,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y in self._loader:
            yield (
                x.to(self.device, non_blocking=True, memory_format=memory_format),
                y.to(self.device, non_blocking=True),
            )


def _stream_transforms(stats: tuple[Sequence[float], Sequence[float]], downsample: int):
    """ImageNet's standard transforms (§4.2): RandomResizedCrop + flip; Resize(256) + CenterCrop(224)."""
    from torchvision.transforms import v2

    size, resize = 224 // downsample, 256 // downsample
    tail = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)]
    train = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *tail])
    evaluate = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), *tail])
    return train, evaluate, (3, size, size)


# ---------------------------------------------------------------------------------------------
# The one door


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
    """The train / val / test loaders of `dataset` in `data_dir` (see the module docstring).

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
    folder = _torchvision_root(dataset, root)
    if folder is None and download and dataset in _TORCHVISION_FOLDER and not (root / "train").is_dir():
        folder = _download_cifar(dataset, root)
    if folder is not None:
        train_set, test_set = (_read_cifar_batches(folder, dataset, train) for train in (True, False))
    else:
        train_files, test_files = _scan(root / "train"), _scan(_eval_folder(root))
        if train_files.classes != test_files.classes:
            raise DataError(f"{root}: the class folders of train/ and {test_files.root.name}/ differ")
        if dataset in _NUM_CLASSES and len(train_files.classes) != _NUM_CLASSES[dataset]:
            raise DataError(
                f"{dataset} has {_NUM_CLASSES[dataset]} classes, {root}/train has "
                f"{len(train_files.classes)} class folders"
            )
        if not _fits_in_memory(train_files):
            return _stream_splits(
                train_files,
                test_files,
                stats,
                subset,
                val_size,
                seed,
                downsample,
                device,
                batch_size,
                eval_batch_size,
                num_workers,
                channels_last,
            )
        cache = _cache_dir(cache_dir)
        train_set, test_set = _decode_cached(train_files, cache), _decode_cached(test_files, cache)
    train_idx, val_idx = _stratified_split(train_set.labels, val_size, subset, seed)
    if min(train_set.images.shape[-2:]) < downsample:
        raise DataError(
            f"downsample {downsample} is larger than the {train_set.images.shape[-1]}-pixel images"
        )

    def loader(images: _Images, idx: torch.Tensor | None, train: bool) -> TensorLoader:
        whole = idx is None or len(idx) == len(images.labels)  # no copy of the whole set
        x, y = (images.images, images.labels) if whole else (images.images[idx], images.labels[idx])
        x = _downsample(x, downsample).to(device)
        return TensorLoader(
            x,
            y.to(device),
            stats,
            batch_size if train else eval_batch_size,
            train=train,
            pad=max(1, _CIFAR_PAD // downsample),
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


def _stream_splits(
    train_files: _Files,
    test_files: _Files,
    stats,
    subset,
    val_size,
    seed,
    downsample,
    device,
    batch_size,
    eval_batch_size,
    num_workers,
    channels_last,
) -> Splits:
    """Splits of a large tree: file lists split as for small ones, decoded on the fly by workers."""
    train_tf, eval_tf, shape = _stream_transforms(stats, downsample)
    train_idx, val_idx = _stratified_split(torch.tensor(train_files.labels), val_size, subset, seed)

    def loader(files: _Files, idx: torch.Tensor | None, transform, train: bool) -> StreamLoader:
        idx = range(len(files.paths)) if idx is None else idx.tolist()
        dataset = _FileDataset([files.paths[i] for i in idx], [files.labels[i] for i in idx], transform)
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
