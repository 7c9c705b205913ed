"""Batch loaders yielding (normalized float32 NCHW images, int64 labels) on a device.

`TensorLoader` batches an in-memory uint8 tensor and, for training, augments whole batches as
tensor operations — the random crop with 4-pixel zero padding and the horizontal flip of the
paper's CIFAR training (§4.1). `StreamLoader` streams a large tree (ImageNet) through DataLoader
workers with the standard RandomResizedCrop / Resize(256) + CenterCrop(224) transforms (§4.2).
Both have `len()` = batches per epoch and `.num_samples`.

`shard(rank, size)` makes a training loader one replica's of a data-parallel job (issue 16): the
batch size stays the global batch and each replica gets its `batch_size / size` part. The
in-memory loader keeps the single-process permutation and augmentation draws - every replica
draws them for the whole global batch from the (seed, epoch) generator and keeps its contiguous
slice - so W replicas together see exactly one worker's batches; the streaming loader uses a
DistributedSampler seeded by (seed, epoch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from trainers.data.folders import DataError

CIFAR_PAD = 4


def augment(images: torch.Tensor, pad: int, generator: torch.Generator, offset: int = 0,
            total: int | None = None) -> torch.Tensor:  # fmt: skip
    """Random crop with `pad` pixels of zero padding and random horizontal flip of a uint8 batch.

    The crop and the flip are one gather over the padded batch: output pixel (i, j) of image b is
    padded pixel (dy_b + i, dx_b + j), or (dy_b + i, dx_b + W − 1 − j) when b is flipped.
    `images` may be the part [offset, offset + len) of a batch of `total`: the draws are made for
    the whole batch (a data-parallel replica's slice is augmented as one worker would).
    """
    b, c, h, w = images.shape
    total = b if total is None else total
    part = slice(offset, offset + b)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (total,), generator=generator)[part].to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (total,), generator=generator)[part].to(images.device)
    flip = (torch.rand(total, generator=generator) < 0.5)[part].to(images.device)
    j = torch.arange(w, device=images.device)
    rows = dy[:, None] + torch.arange(h, device=images.device)
    cols = dx[:, None] + torch.where(flip[:, None], j.flip(0), j)
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, -1).gather(2, index).view(b, c, h, w)


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch: resumed runs draw the same batches as uninterrupted ones."""
    return seed * 1_000_003 + epoch


class _SeededLoader:
    """What both loaders share: a sample count and per-epoch reseeding of their generator."""

    labels: torch.Tensor
    batch_size: int
    _seed: int
    _generator: torch.Generator
    _rank: int = 0
    _size: int = 1

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Make this epoch's order and augmentation a function of (seed, epoch) alone."""
        self._generator.manual_seed(epoch_seed(self._seed, epoch))

    def shard(self, rank: int, size: int) -> None:
        """Yield replica `rank`'s part of every batch of `size` replicas (see the module doc)."""
        if not getattr(self, "train", True):
            raise ValueError("only a training loader is sharded: rank 0 evaluates on the whole split")
        if self.batch_size % size or not 0 <= rank < size:
            raise ValueError(f"the batch size {self.batch_size} must split evenly over {size} workers "
                             f"(rank {rank})")  # fmt: skip
        self._rank, self._size = rank, size


class TensorLoader(_SeededLoader):
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
        pad: int = CIFAR_PAD,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.pad, self.channels_last = batch_size, train, pad, channels_last
        mean, std = (
            torch.tensor(s, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) for s in stats
        )
        self._scale, self._shift = 1.0 / (255.0 * std), mean / std
        self._seed, self._generator = seed, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return max(1, n // b) if self.train else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b = self.num_samples, self.batch_size
        if self.train:
            order = torch.randperm(n, generator=self._generator).to(self.images.device)
        for i in range(len(self)):
            if self.train:
                part = b // self._size
                idx = order[i * b : (i + 1) * b][self._rank * part : (self._rank + 1) * part]
                x = augment(self.images[idx], self.pad, self._generator, self._rank * part, b)
                y = self.labels[idx]
            else:
                x, y = self.images[i * b : (i + 1) * b], self.labels[i * b : (i + 1) * b]
            x = x.float().mul_(self._scale).sub_(self._shift)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


class FileDataset(Dataset):
    """Image files opened with PIL and transformed, for DataLoader workers."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as image:
                return self.transform(image.convert("RGB")), self.labels[i]
        except (OSError, ValueError) as error:  # stop, naming the file (the README's bad-data policy)
            raise DataError(f"cannot decode image {self.paths[i]}: {error}") from None


class StreamLoader(_SeededLoader):
    """Batches of a large image tree decoded by DataLoader workers, moved to `device`."""

    def __init__(
        self,
        dataset: FileDataset,
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
        self.train, self._dataset, self._num_workers = train, dataset, num_workers
        self._seed, self._generator = seed, torch.Generator().manual_seed(seed)
        self._sampler: DistributedSampler | None = None
        self._loader = self._data_loader(batch_size)

    def _data_loader(self, batch_size: int) -> DataLoader:
        return DataLoader(
            self._dataset,
            batch_size=batch_size,
            shuffle=self.train and self._sampler is None,
            sampler=self._sampler,
            drop_last=self.train and (self._sampler is not None or len(self._dataset) > batch_size),
            num_workers=self._num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self._num_workers > 0,
            generator=self._generator if self._sampler is None else None,
        )

    def shard(self, rank: int, size: int) -> None:
        """Replica `rank` of `size`: a DistributedSampler (seed, epoch) and batches of batch_size / size."""
        super().shard(rank, size)
        self._sampler = DistributedSampler(self._dataset, size, rank, shuffle=True, seed=self._seed, drop_last=True)
        self._loader = self._data_loader(self.batch_size // size)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self._sampler is not None:
            self._sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y in self._loader:
            yield (
                x.to(self.device, non_blocking=True, memory_format=memory_format),
                y.to(self.device, non_blocking=True),
            )


def stream_transforms(stats: tuple[Sequence[float], Sequence[float]], downsample: int):
    """ImageNet's standard transforms (§4.2): RandomResizedCrop + flip; Resize(256) + CenterCrop(224)."""
    from torchvision.transforms import v2

    size, resize = 224 // downsample, 256 // downsample
    tail = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)]
    train = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *tail])
    evaluate = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), *tail])
    return train, evaluate, (3, size, size)
