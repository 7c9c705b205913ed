"""Shared fixtures: where the real CIFAR-10 tree is (the Makefile passes it; never downloaded)."""

import os
from pathlib import Path

import pytest

# Ray attaches a logging handler to the sys.stderr it sees when first imported; imported inside a
# test that uses capsys, that stream is closed after the test and later warnings print "Logging
# error" tracebacks. Importing it here binds it to pytest's session-long capture instead.
import ray  # noqa: F401, E402

_BESIDE_REPO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def cifar10_path() -> Path | None:
    """The shared CIFAR-10 ImageFolder tree, from $POLARSEARCH_TEST_DATA or beside the repository."""
    configured = os.environ.get("POLARSEARCH_TEST_DATA")
    path = Path(configured) if configured else _BESIDE_REPO
    return path if (path / "train").is_dir() else None


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    path = cifar10_path()
    if path is None:
        pytest.skip("the shared CIFAR-10 tree is not available (set POLARSEARCH_TEST_DATA)")
    return path
