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

The package, one job a module:

    folders.py   dataset names, `check`, what a data folder holds, the files of an ImageFolder tree
    decode.py    torchvision's CIFAR batches, image files decoded in a thread pool, average pooling
    cache.py     the on-disk cache of decoded trees
    stratify.py  stratified training subset and validation split
    loaders.py   `augment`, `TensorLoader` (in memory), `StreamLoader` (DataLoader workers)
    splits.py    `load`, the one door, and the `Splits` it returns
    verify.py    `verify`, the data check made before anything trains (the bad-data policy)
"""

from trainers.data.decode import fetch
from trainers.data.folders import DATASETS, DataError, check
from trainers.data.loaders import StreamLoader, TensorLoader, augment
from trainers.data.splits import Splits, load
from trainers.data.verify import verify

__all__ = ["DATASETS", "DataError", "Splits", "StreamLoader", "TensorLoader", "augment", "check", "fetch", "load",
           "verify"]
