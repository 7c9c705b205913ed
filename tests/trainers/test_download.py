"""--download: a download that fails is one DataError line and leaves no folder behind."""

import pytest
import torchvision

from trainers.data import DataError, fetch


def test_failed_download_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    # A closed port on loopback: the download is refused at once, nothing leaves this machine.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    root = tmp_path / "cifar10"
    with pytest.raises(DataError, match="could not download cifar10") as error:
        fetch("cifar10", root)
    assert "\n" not in str(error.value)
    assert not root.exists()

