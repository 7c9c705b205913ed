"""Issue 12: bench/gpu.sh, the one script a borrowed CUDA machine runs, checked on CPU (--dry-run):
its three steps pass, the training options agree with the plain path, and pruned = masked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # about 70 s on 2 cores


def test_gpu_script_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "all three steps passed" in done.stdout
    train = json.loads((tmp_path / "train.json").read_text())["results"]
    plain, channels_last = train["plain"], train["channels_last"]
    assert plain["images_per_s"] > 0 and channels_last["images_per_s"] > 0
    # the same step on the same batch from the same seed: the same loss in either memory format
    assert channels_last["loss"] == pytest.approx(plain["loss"], rel=1e-4)
    assert json.loads((tmp_path / "speed.json").read_text())["rows"]
    checks = [line for line in done.stdout.splitlines() if "pruned vs masked" in line]
    assert len(checks) == 7 and all(line.rstrip().endswith("True  ok") for line in checks)
