"""Finding the data: dataset names, what a data folder holds, and the image files of a tree.

A data folder holds either torchvision's CIFAR files (`cifar-10-batches-py`, `cifar-100-python`)
or an ImageFolder tree (`train/<class>/*.jpg` and `test/` or `val/`); `check` tells the user in one
line when it holds neither.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATASETS = ("cifar10", "cifar100", "imagefolder")

TORCHVISION_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Trees of images up to this side, and this many bytes decoded, are held in memory.
_IN_MEMORY_MAX_SIDE = 64
_IN_MEMORY_MAX_BYTES = 4 << 30


class DataError(ValueError):
    """A data folder or dataset name the user gave cannot be used; the message is one line."""


@dataclass(frozen=True)
class Files:
    root: Path
    paths: list[str]
    labels: list[int]
    classes: list[str]


def check(dataset: str, data_dir: str | os.PathLike, download: bool = False) -> None:
    """Raise `DataError` (one line) if `dataset` is unknown or `data_dir` is missing or empty."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    root = Path(data_dir).expanduser()
    torchvision_name = TORCHVISION_FOLDER.get(dataset)
    if torchvision_root(dataset, root) is not None:
        return
    if download and needs_download(dataset, root):
        return  # torchvision's files will be fetched into it
    if not root.is_dir():
        hint = " (pass --download to fetch it)" if torchvision_name else ""
        raise DataError(f"data folder {root} does not exist{hint}")
    if not any(root.iterdir()):
        raise DataError(f"data folder {root} is empty")
    if not (root / "train").is_dir():
        expected = f"torchvision's {torchvision_name}/ nor " if torchvision_name else ""
        raise DataError(f"data folder {root} holds neither {expected}an ImageFolder train/ folder")
    if eval_folder(root) is None:
        raise DataError(f"data folder {root} has train/ but no test/ or val/ folder")
    for folder in (root / "train", eval_folder(root)):
        if not _has_image(folder):
            raise DataError(f"{folder} holds no class folders with images")


def needs_download(dataset: str, root: Path) -> bool:
    """True when `root` holds neither torchvision's files of `dataset` nor an ImageFolder tree."""
    return dataset in TORCHVISION_FOLDER and torchvision_root(dataset, root) is None and not (root / "train").is_dir()


def torchvision_root(dataset: str, root: Path) -> Path | None:
    """The folder of torchvision's pickled CIFAR batches under (or at) `root`, if there is one."""
    name = TORCHVISION_FOLDER.get(dataset)
    if name is None:
        return None
    marker = "data_batch_1" if dataset == "cifar10" else "train"
    for folder in (root / name, root):
        if (folder / marker).is_file():
            return folder
    return None


def eval_folder(root: Path) -> Path | None:
    return next((root / n for n in ("test", "val") if (root / n).is_dir()), None)


def _is_image(name: str) -> bool:
    return name.lower().endswith(_IMAGE_SUFFIXES)


def _has_image(folder: Path) -> bool:
    for entry in os.scandir(folder):
        if entry.is_dir() and any(_is_image(e.name) and e.is_file() for e in os.scandir(entry.path)):
            return True
    return False


def scan(folder: Path) -> Files:
    """The image files of an ImageFolder split: classes are its sub-folders, sorted (label order)."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(e.path for e in os.scandir(folder / name) if _is_image(e.name) and e.is_file())
        paths += files
        labels += [label] * len(files)
    return Files(folder, paths, labels, classes)


def tree_files(root: Path, dataset: str) -> tuple[Files, Files]:
    """The train and test (or val) files of the ImageFolder tree at `root`: the same classes in both
    splits, as many as a named dataset has."""
    train, test = scan(root / "train"), scan(eval_folder(root))
    if train.classes != test.classes:
        only = sorted(set(train.classes) ^ set(test.classes))
        raise DataError(f"{root}: the class folders of train/ and {test.root.name}/ differ"
                        f"{' (' + ', '.join(only[:5]) + ')' if only else ' (order)'}")  # fmt: skip
    if dataset in NUM_CLASSES and len(train.classes) != NUM_CLASSES[dataset]:
        raise DataError(f"{dataset} has {NUM_CLASSES[dataset]} classes, {root}/train has "
                        f"{len(train.classes)} class folders")  # fmt: skip
    return train, test


def check_classes(train: Files, test: Files) -> None:
    """What a classifier needs of a tree's classes: at least two, none without images (a stray folder)."""
    if len(train.classes) < 2:
        raise DataError(f"{train.root} has {len(train.classes)} class folder(s): a classifier needs at least 2")
    for files in (train, test):
        counts = [0] * len(files.classes)
        for label in files.labels:
            counts[label] += 1
        empty = [name for name, n in zip(files.classes, counts, strict=True) if n == 0]
        if empty:
            raise DataError(f"class folder {files.root / empty[0]} holds no images "
                            f"(every class folder needs images; remove stray folders)")  # fmt: skip


def fits_in_memory(files: Files) -> bool:
    from PIL import Image

    try:
        with Image.open(files.paths[0]) as image:  # reads the header only
            width, height = image.size
    except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"cannot decode image {files.paths[0]}: {error}") from None
    return (
        max(width, height) <= _IN_MEMORY_MAX_SIDE
        and len(files.paths) * 3 * width * height <= _IN_MEMORY_MAX_BYTES
    )
