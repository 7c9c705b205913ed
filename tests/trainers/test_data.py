"""The data pipeline against folder trees written here (known pixels) and the shared CIFAR-10."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainers.data import DATASETS, DataError, check, load

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10_STATS = ((0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606))
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def to_uint8(x: torch.Tensor, stats=IMAGENET_STATS) -> torch.Tensor:
    """Undo the loader's normalization: back to the file's 0..255 pixel values."""
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in stats)
    pixels = ((x.float() * std + mean) * 255).round()
    assert (pixels - (x.float() * std + mean) * 255).abs().max() < 0.01  # exact values, not a blur
    return pixels.to(torch.uint8)


def save(array: np.ndarray, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def uniform_tree(
    root: Path, counts: dict[str, tuple[int, int]], side: int = 16
) -> dict[tuple[int, int], tuple[str, str]]:
    """Uniform-colour PNG images: red encodes the class (its order of creation), green a unique id.

    Returns {(red, green): (class name, split)}. Classes are created in the order of `counts`, not sorted.
    """
    truth, image_id = {}, 1
    for code, (name, (n_train, n_test)) in enumerate(counts.items()):
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                colour = (40 + 50 * code, image_id, 77)
                save(np.full((side, side, 3), colour, np.uint8), root / split / name / f"{i:03d}.png")
                truth[colour[:2]] = (name, split)
                image_id += 1
    return truth


def centre_colours(loader, stats=IMAGENET_STATS) -> list[tuple[tuple[int, int], int]]:
    """((red, green) of each image's centre pixel, label) for one pass over a loader."""
    seen = []
    for x, y in loader:
        pixels = to_uint8(x, stats)
        h, w = pixels.shape[-2:]
        centre = pixels[:, :, h // 2, w // 2]
        seen += [((int(c[0]), int(c[1])), int(label)) for c, label in zip(centre, y, strict=True)]
    return seen


def per_class(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels, minlength=num_classes).tolist()


def test_labels_shapes_and_counts_follow_the_folder_tree(tmp_path):
    truth = uniform_tree(tmp_path / "tree", {"zebra": (7, 2), "apple": (5, 3), "mango": (6, 1)})
    splits = load("imagefolder", tmp_path / "tree", batch_size=4, eval_batch_size=4, cache_dir=tmp_path / "c")
    assert splits.classes == ["apple", "mango", "zebra"]  # sorted folder names are the labels
    assert (splits.num_classes, splits.input_shape, splits.val) == (3, (3, 16, 16), None)
    assert (splits.train.num_samples, len(splits.train)) == (18, 4)  # 18 // 4, last batch dropped
    assert (splits.test.num_samples, len(splits.test)) == (6, 2)
    test_batches = list(splits.test)
    assert [tuple(x.shape) for x, _ in test_batches] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in test_batches)
    seen = centre_colours(splits.test)
    assert sorted(colour for colour, _ in seen) == sorted(
        c for c, (_, split) in truth.items() if split == "test"
    )
    for colour, label in seen:
        assert splits.classes[label] == truth[colour][0]
    for x, _ in test_batches:  # not augmented: every pixel is the file's colour
        pixels = to_uint8(x)
        assert torch.equal(pixels, pixels[:, :, :1, :1].expand_as(pixels))
    assert per_class(splits.train.labels, 3) == [5, 6, 7]
    train_seen = centre_colours(splits.train)
    assert len(train_seen) == 16 and len({c for c, _ in train_seen}) == 16
    assert all(truth[colour] == (splits.classes[label], "train") for colour, label in train_seen)


def test_stratified_subset_and_disjoint_validation_split(tmp_path):
    truth = uniform_tree(tmp_path / "tree", {"a": (10, 1), "b": (10, 1), "c": (10, 1), "d": (4, 1)})
    kwargs = {"batch_size": 4, "cache_dir": tmp_path / "c"}
    splits = load("imagefolder", tmp_path / "tree", subset=12, val_size=6, seed=3, **kwargs)
    val_counts = per_class(splits.val.labels, 4)
    assert sum(val_counts) == 6 and max(val_counts) - min(val_counts) <= 1
    assert per_class(splits.train.labels, 4) == [3, 3, 3, 3]
    train = centre_colours(splits.train)
    val = centre_colours(splits.val)
    assert len(train) == 12 and len({c for c, _ in train}) == 12  # one epoch sees each image once
    assert len(val) == 6 and len({c for c, _ in val}) == 6
    assert not {c for c, _ in train} & {c for c, _ in val}
    assert all(truth[colour] == (splits.classes[label], "train") for colour, label in train + val)

    again = load("imagefolder", tmp_path / "tree", subset=12, val_size=6, seed=3, **kwargs)
    assert {c for c, _ in centre_colours(again.val)} == {c for c, _ in val}
    other = load("imagefolder", tmp_path / "tree", subset=12, val_size=6, seed=4, **kwargs)
    assert {c for c, _ in centre_colours(other.val)} != {c for c, _ in val}

    uneven = load("imagefolder", tmp_path / "tree", subset=30, **kwargs)
    assert sorted(per_class(uneven.train.labels, 4)) == [4, 8, 9, 9]  # the small class is taken whole
    with pytest.raises(DataError, match="34"):
        load("imagefolder", tmp_path / "tree", subset=30, val_size=5, **kwargs)


def noise_tree(root: Path, side: int, n_per_class: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random PNG images with no zero pixel (so padding is never mistaken for content)."""
    rng = np.random.default_rng(seed)
    images = {}
    for name in ("cat", "dog"):
        images[name] = [rng.integers(1, 256, (side, side, 3), dtype=np.uint8) for _ in range(n_per_class)]
        for split in ("train", "test"):
            for i, array in enumerate(images[name]):
                save(array, root / split / name / f"{i}.png")
    return images


def all_crops(original: np.ndarray, pad: int) -> torch.Tensor:
    """Every crop of the zero-padded image at every offset, plain and flipped: (K, 3, H, W)."""
    image = torch.from_numpy(original).permute(2, 0, 1)
    h, w = image.shape[1:]
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    crops = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            crops += [crop, crop.flip(-1)]
    return torch.stack(crops)


def test_augmentation_only_shifts_and_flips_and_keeps_labels(tmp_path):
    originals = noise_tree(tmp_path / "tree", side=12, n_per_class=6)
    splits = load("imagefolder", tmp_path / "tree", batch_size=4, seed=1, cache_dir=tmp_path / "c")
    sources = [(name, i) for name in originals for i in range(len(originals[name]))]
    crops = torch.stack([all_crops(originals[name][i], pad=4) for name, i in sources])  # (24, 162, 3, 12, 12)
    offsets = set()
    for _epoch in range(3):
        matched = []
        for x, y in splits.train:
            for image, label in zip(to_uint8(x), y, strict=True):
                hits = torch.nonzero((crops == image).flatten(2).all(2)).tolist()  # [(source, offset)]
                assert hits, "an augmented image is no shift/flip of any training image"
                assert len({source for source, _ in hits}) == 1
                name, i = sources[hits[0][0]]
                assert splits.classes[int(label)] == name
                matched.append((name, i))
                offsets.add(hits[0][1])
        assert len(matched) == 12 and len(set(matched)) == 12
    assert len({k // 2 for k in offsets}) > 10  # many (dy, dx) offsets: index (dy·9 + dx)·2 + flipped
    assert any(k % 2 for k in offsets) and any(k % 2 == 0 for k in offsets)  # flipped and not


def test_downsample_average_pools_once_and_scales_the_padding(tmp_path):
    originals = noise_tree(tmp_path / "tree", side=12, n_per_class=3)
    splits = load("imagefolder", tmp_path / "tree", downsample=2, batch_size=2, cache_dir=tmp_path / "c")
    assert splits.input_shape == (3, 6, 6)
    pooled = [
        torch.from_numpy(a.reshape(6, 2, 6, 2, 3).astype(np.float64).mean((1, 3))).round().to(torch.uint8)
        for name in ("cat", "dog")
        for a in originals[name]
    ]
    test_images = torch.cat([to_uint8(x) for x, _ in splits.test])
    assert torch.equal(test_images, torch.stack(pooled).permute(0, 3, 1, 2))
    for x, _ in splits.train:  # padding 4 // 2 = 2 at the pooled resolution
        for image in to_uint8(x):
            crops = torch.cat([all_crops(p.numpy(), pad=2) for p in pooled])
            assert (crops == image).flatten(1).all(1).any()


def test_jpeg_decoding_equals_pil_and_odd_sizes_are_resized(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(3)]
    for i, array in enumerate(arrays):
        save(array, tmp_path / "tree" / "train" / "x" / f"{i}.jpg", quality=90)
        save(array, tmp_path / "tree" / "val" / "x" / f"{i}.jpeg", quality=75)
    save(np.full((10, 14, 3), (9, 99, 199), np.uint8), tmp_path / "tree" / "val" / "x" / "9.png")
    splits = load("imagefolder", tmp_path / "tree", cache_dir=tmp_path / "c")
    (x, y), *_ = list(splits.test)  # val/ stands in for a missing test/
    pixels = to_uint8(x)
    for i in range(3):
        decoded = np.array(Image.open(tmp_path / "tree" / "val" / "x" / f"{i}.jpeg").convert("RGB"))
        assert torch.equal(pixels[i], torch.from_numpy(decoded).permute(2, 0, 1))
    assert pixels.shape == (4, 3, 20, 20) and y.tolist() == [0, 0, 0, 0]
    assert torch.equal(
        pixels[3], torch.tensor([9, 99, 199], dtype=torch.uint8).view(3, 1, 1).expand(3, 20, 20)
    )


def test_decoded_images_are_cached_by_path_count_and_mtime(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        for i in range(2):
            save(np.full((8, 8, 3), 100, np.uint8), tree / split / "k" / f"{i}.png", compress_level=0)
    monkeypatch.setenv("POLARSEARCH_CACHE", str(tmp_path / "env-cache"))
    first = load("imagefolder", tree)
    assert len(list((tmp_path / "env-cache").glob("*.pt"))) == 2  # train and test, default cache dir
    assert torch.equal(to_uint8(next(iter(first.test))[0]), torch.full((2, 3, 8, 8), 100, dtype=torch.uint8))

    # Same size (uncompressed PNG) and mtime: the cache answers, so the old pixels come back.
    target = tree / "test" / "k" / "0.png"
    stat = target.stat()
    save(np.full((8, 8, 3), 200, np.uint8), target, compress_level=0)
    assert target.stat().st_size == stat.st_size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert to_uint8(next(iter(load("imagefolder", tree).test))[0])[0].unique().tolist() == [100]

    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: decoded again
    assert to_uint8(next(iter(load("imagefolder", tree).test))[0])[0].unique().tolist() == [200]
    save(np.full((8, 8, 3), 50, np.uint8), tree / "test" / "k" / "2.png")  # one more file: new key
    assert load("imagefolder", tree).test.num_samples == 3


def test_train_loader_is_seeded_and_reshuffles_every_epoch(tmp_path):
    noise_tree(tmp_path / "tree", side=8, n_per_class=8)
    kwargs = {"batch_size": 4, "cache_dir": tmp_path / "c"}
    a, b = (load("imagefolder", tmp_path / "tree", seed=5, **kwargs).train for _ in range(2))
    epochs_a = [torch.cat([x for x, _ in a]) for _ in range(2)]
    epochs_b = [torch.cat([x for x, _ in b]) for _ in range(2)]
    assert all(torch.equal(p, q) for p, q in zip(epochs_a, epochs_b, strict=True))
    assert not torch.equal(epochs_a[0], epochs_a[1])
    other = load("imagefolder", tmp_path / "tree", seed=6, **kwargs).train
    assert not torch.equal(torch.cat([x for x, _ in other]), epochs_a[0])


def write_cifar10_batches(root: Path, per_batch: int = 3) -> tuple[np.ndarray, list[int]]:
    """torchvision's CIFAR-10 layout: pickled {'data': N×3072 channel-major uint8, 'labels'}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch_labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": batch, "labels": batch_labels, "batch_label": name}, f)
        data.append(batch)
        labels += batch_labels
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch}, f)
    return np.concatenate(data), labels


def test_torchvision_cifar10_files_are_detected_and_read(tmp_path):
    data, labels = write_cifar10_batches(tmp_path)
    splits = load("cifar10", tmp_path, eval_batch_size=100)
    assert splits.classes == CIFAR10_CLASSES and splits.input_shape == (3, 32, 32)
    assert (splits.train.num_samples, splits.test.num_samples) == (15, 3)
    (x, y), *rest = list(splits.test)
    assert not rest and y.tolist() == labels[15:]
    expected = torch.from_numpy(data[15:].reshape(3, 3, 32, 32))
    assert torch.equal(to_uint8(x, CIFAR10_STATS), expected)
    assert splits.train.labels.tolist() == labels[:15]


def test_torchvision_cifar100_files_are_read(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 2)):
        with open(folder / name, "wb") as f:
            labels = [3, 99, 0, 5, 7, 3][:n]
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": labels}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i:02d}" for i in range(100)]}, f)
    splits = load("cifar100", tmp_path)
    assert splits.num_classes == 100 and splits.classes[99] == "c99"
    assert splits.train.labels.tolist() == [3, 99, 0, 5, 7, 3] and splits.test.num_samples == 2


def test_large_images_stream_through_workers_with_imagenet_transforms(tmp_path):
    truth = uniform_tree(tmp_path / "tree", {"b": (3, 2), "a": (5, 2)}, side=80)
    splits = load(
        "imagefolder", tmp_path / "tree", batch_size=2, eval_batch_size=3, num_workers=0, val_size=2
    )
    assert splits.input_shape == (3, 224, 224) and splits.classes == ["a", "b"]
    assert (splits.train.num_samples, splits.val.num_samples, splits.test.num_samples) == (6, 2, 4)
    assert (len(splits.train), len(splits.test)) == (3, 2)
    assert per_class(splits.val.labels, 2) == [1, 1]
    for loader in (splits.train, splits.val, splits.test):
        for x, y in loader:
            assert x.shape[1:] == (3, 224, 224) and x.dtype == torch.float32
            mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in IMAGENET_STATS)
            pixels = (x * std + mean) * 255  # resizing a uniform image keeps it uniform
            colours = pixels[:, :, 112, 112].round().int()
            assert (pixels - colours[:, :, None, None]).abs().max() < 1
            assert [truth[(int(c[0]), int(c[1]))][0] for c in colours] == [splits.classes[i] for i in y]


def make_folder(root: Path, case: str) -> Path:
    """A data folder that is wrong in the way `case` names."""
    if case == "missing":
        return root / "missing"
    if case == "junk":
        (root / "junk.txt").write_text("x")
    if case == "no-test":
        (root / "train").mkdir()
    if case == "no-images":
        for split in ("train", "val"):
            (root / split / "k").mkdir(parents=True)
            (root / split / "k" / "notes.txt").write_text("x")
    return root


@pytest.mark.parametrize(
    ("dataset", "case", "message"),
    [
        ("mnist", "empty", "unknown dataset 'mnist'; choose from cifar10, cifar100, imagefolder"),
        ("imagefolder", "missing", "does not exist"),
        ("cifar10", "missing", "does not exist (pass --download to fetch it)"),
        ("imagefolder", "empty", "is empty"),
        ("imagefolder", "junk", "holds neither an ImageFolder train/ folder"),
        ("cifar10", "junk", "holds neither torchvision's cifar-10-batches-py/ nor an ImageFolder train/"),
        ("cifar10", "no-test", "has train/ but no test/ or val/ folder"),
        ("imagefolder", "no-images", "holds no class folders with images"),
    ],
)
def test_check_errors_are_one_line(tmp_path, dataset, case, message):
    root = make_folder(tmp_path, case)
    for call in (lambda: check(dataset, root), lambda: load(dataset, root)):
        with pytest.raises(DataError) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value)
        assert isinstance(info.value, ValueError)
    assert DATASETS == ("cifar10", "cifar100", "imagefolder")


def test_user_errors_on_a_valid_tree(tmp_path):
    uniform_tree(tmp_path / "tree", {"a": (3, 1), "b": (3, 1)}, side=8)
    check("imagefolder", tmp_path / "tree")  # a good tree passes
    with pytest.raises(DataError, match="cifar10 has 10 classes"):
        load("cifar10", tmp_path / "tree", cache_dir=tmp_path / "c")
    for bad in (
        {"subset": 0},
        {"val_size": -1},
        {"downsample": 0},
        {"batch_size": 0},
        {"subset": 7},
        {"val_size": 6},
    ):
        with pytest.raises(DataError):
            load("imagefolder", tmp_path / "tree", cache_dir=tmp_path / "c", **bad)
    with pytest.raises(DataError, match="downsample 16"):
        load("imagefolder", tmp_path / "tree", cache_dir=tmp_path / "c", downsample=16)
    (tmp_path / "tree" / "test" / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot decode image .*broken.jpg") as info:
        load("imagefolder", tmp_path / "tree", cache_dir=tmp_path / "c")
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def shared_cifar10(cifar10_dir):
    """The shared CIFAR-10 tree, loaded once through the default cache (warm loads take < 1 s)."""
    return load("cifar10", cifar10_dir, eval_batch_size=1000)


def test_shared_cifar10_counts_and_shapes(shared_cifar10):
    splits = shared_cifar10
    assert splits.classes == CIFAR10_CLASSES and splits.input_shape == (3, 32, 32)
    assert per_class(splits.train.labels, 10) == [5000] * 10
    assert per_class(splits.test.labels, 10) == [1000] * 10
    assert (len(splits.train), len(splits.test)) == (390, 10)
    x, y = next(iter(splits.train))
    assert x.shape == (128, 3, 32, 32) and y.shape == (128,)
    test_images = torch.cat([x for x, _ in splits.test])
    assert test_images.mean((0, 2, 3)).abs().max() < 0.05  # normalized with the train statistics
    assert (test_images.std((0, 2, 3)) - 1).abs().max() < 0.05


def test_shared_cifar10_pixels_equal_pil_decoding(shared_cifar10, cifar10_dir):
    test = list(shared_cifar10.test)
    for name, position in (("airplane", 0), ("cat", 123), ("truck", 999), ("frog", 500)):
        files = sorted(os.listdir(cifar10_dir / "test" / name))
        index = CIFAR10_CLASSES.index(name) * 1000 + position  # classes sorted, files sorted
        x, y = test[index // 1000]
        decoded = np.array(Image.open(cifar10_dir / "test" / name / files[position]).convert("RGB"))
        assert int(y[index % 1000]) == CIFAR10_CLASSES.index(name)
        assert torch.equal(to_uint8(x[index % 1000 : index % 1000 + 1], CIFAR10_STATS)[0],
                           torch.from_numpy(decoded).permute(2, 0, 1))  # fmt: skip
