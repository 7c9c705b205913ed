"""The data check before anything trains (`trainers.data.verify`): every bad-data case of issue 10
on trees written here, each one line naming the problem; what is fine passes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers.data import DataError, load, verify
from trainers.data.loaders import FileDataset


def tree(root: Path, classes: dict[str, tuple[int, int]], side: int = 8) -> Path:
    """Real PNG images: {class: (train count, test count)}."""
    rng = np.random.default_rng(0)
    for name, counts in classes.items():
        for split, count in zip(("train", "test"), counts, strict=True):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def jpeg_bytes(side: int = 8) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture
def good(tmp_path):
    return tree(tmp_path / "good", {"a": (6, 2), "b": (6, 2)})


def _error(root: Path, cache: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        verify("imagefolder", root, cache_dir=cache, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_good_tree_passes_and_fills_the_decode_cache(good, tmp_path):
    verify("imagefolder", good, subset=8, val_size=4, downsample=4, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.pt"))) == 2  # the trials read what the check decoded


@pytest.mark.parametrize(
    ("case", "content", "words"),
    [
        ("truncated jpeg", jpeg_bytes()[:60], "Image is incomplete or truncated"),
        ("0-byte jpeg", b"", "the file is empty (0 bytes)"),
        ("text named .jpg", b"hello, not an image", "cannot decode image"),
    ],
)
def test_an_unreadable_image_stops_with_the_file_named(good, tmp_path, case, content, words):
    (good / "train" / "b" / "bad.jpg").write_bytes(content)
    message = _error(good, tmp_path / "c")
    assert f"{good / 'train' / 'b' / 'bad.jpg'}" in message and words in message
    assert not list((tmp_path / "c").glob("*train*"))  # nothing cached of a tree that does not decode


def test_a_png_named_jpg_is_read_by_its_content(good, tmp_path):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(good / "train" / "a" / "really-a-png.jpg", format="PNG")
    verify("imagefolder", good, cache_dir=tmp_path / "c")
    splits = load("imagefolder", good, cache_dir=tmp_path / "c")
    assert splits.train.num_samples == 13


def test_classes_at_least_two_none_empty_same_in_both_splits(tmp_path):
    one = tree(tmp_path / "one", {"a": (4, 1)})
    assert "a classifier needs at least 2" in _error(one, tmp_path / "c")
    stray = tree(tmp_path / "stray", {"a": (4, 1), "b": (4, 1), "empty": (0, 0)})
    assert "stray/train/empty holds no images" in _error(stray, tmp_path / "c")
    test_only_empty = tree(tmp_path / "t", {"a": (4, 1), "b": (4, 0)})
    assert "t/test/b holds no images" in _error(test_only_empty, tmp_path / "c")
    differ = tree(tmp_path / "differ", {"a": (4, 1), "b": (4, 0)})
    (differ / "test" / "b").rmdir()
    assert "differ (b)" in _error(differ, tmp_path / "c")
    with pytest.raises(DataError, match="cifar10 has 10 classes"):
        verify("cifar10", tree(tmp_path / "two", {"a": (4, 1), "b": (4, 1)}), cache_dir=tmp_path / "c")


def test_sizes_asked_for_must_fit_the_data(good, tmp_path):
    assert "subset 20" in _error(good, tmp_path / "c", subset=20)
    assert "val_size 12" in _error(good, tmp_path / "c", val_size=12)
    assert "val_size 4 + subset 10" in _error(good, tmp_path / "c", subset=10, val_size=4)
    assert "downsample 16 is larger than the 8-pixel images" in _error(good, tmp_path / "c", downsample=16)


def test_a_streamed_tree_is_checked_on_a_sample_and_a_bad_file_met_later_is_named(tmp_path):
    big = tree(tmp_path / "big", {"a": (2, 1), "b": (2, 1)}, side=80)  # > 64 px: streamed, not held in memory
    verify("imagefolder", big, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()  # nothing decoded into memory or cached
    (big / "test" / "a" / "bad.png").write_bytes(b"\x89PNG broken")
    assert "bad.png" in _error(big, tmp_path / "c")  # the sample is every file of a tree this small
    dataset = FileDataset([str(big / "test" / "a" / "bad.png")], [0], lambda image: image)
    with pytest.raises(DataError, match="cannot decode image .*bad.png"):
        dataset[0]
