"""The polarsearch command: the bad-input matrix (one line, exit 2, nothing written) and a real trial."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.cli import main
from search.outcome import SearchOutcome, TrialRow
from search.report import summary
from search.strategies import Trial


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder with a tiny ImageFolder tree (enough for the data check), bad presets and an
    empty folder; the tests run from it and compare its contents before and after."""
    for split in ("train", "test"):
        (tmp_path / "data" / split / "cat").mkdir(parents=True)
        (tmp_path / "data" / split / "cat" / "0.png").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "malformed.yaml").write_text("model: [resnet20\n")
    (tmp_path / "unknown_key.yaml").write_text("model: resnet20\nlamda: 0.1\n")
    (tmp_path / "not_a_mapping.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "search.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


SEARCH = ["--target-flops", "0.5", "--preset", "smoke", "--data-dir", "data"]
PORT = _closed_port()
BAD_INPUTS = {
    "target above 1": ["--target-flops", "1.5", "--data-dir", "data"],
    "target 0": ["--target-flops", "0", "--data-dir", "data"],
    "target 1": ["--target-flops", "1", "--data-dir", "data"],
    "target negative": ["--target-flops", "-0.2", "--data-dir", "data"],
    "target not a number": ["--target-flops", "half", "--data-dir", "data"],
    "target missing": ["--delta", "0.05", "--data-dir", "data"],
    "delta 0": [*SEARCH, "--delta", "0"],
    "delta negative": [*SEARCH, "--delta", "-0.05"],
    "delta equal to target": [*SEARCH, "--delta", "0.5"],
    "delta above target": [*SEARCH, "--delta", "0.7"],
    "unknown model": [*SEARCH, "--model", "resnet9000"],
    "unknown dataset": [*SEARCH, "--dataset", "mnist"],
    "unknown preset": ["--target-flops", "0.5", "--preset", "no-such-preset", "--data-dir", "data"],
    "missing preset file": ["--target-flops", "0.5", "--preset", "missing.yaml", "--data-dir", "data"],
    "malformed preset yaml": ["--target-flops", "0.5", "--preset", "malformed.yaml", "--data-dir", "data"],
    "unknown key in preset": ["--target-flops", "0.5", "--preset", "unknown_key.yaml", "--data-dir", "data"],
    "preset not a mapping": ["--target-flops", "0.5", "--preset", "not_a_mapping.yaml", "--data-dir", "data"],
    "unknown strategy": [*SEARCH, "--strategy", "bogo"],
    "missing data folder": ["--target-flops", "0.5", "--preset", "smoke", "--data-dir", "nowhere"],
    "empty data folder": ["--target-flops", "0.5", "--preset", "smoke", "--data-dir", "empty"],
    "no data folder": ["--target-flops", "0.5", "--preset", "smoke"],
    "bad config value": [*SEARCH, "--epochs", "0"],
    "max_epochs above epochs": [*SEARCH, "--epochs", "3", "--max-epochs", "5"],
    "unreachable ray address": [*SEARCH, "--ray-address", f"127.0.0.1:{PORT}"],
    "malformed ray address": [*SEARCH, "--ray-address", "head-node"],
    "unreachable mlflow server": [*SEARCH, "--mlflow-uri", f"http://127.0.0.1:{PORT}"],
    "mlflow sqlite in a missing folder": [*SEARCH, "--mlflow-uri", "sqlite:///nowhere/mlflow.db"],
    "negative lam_low": [*SEARCH, "--lam-low", "-1e-4"],
    "parallel 0": [*SEARCH, "--parallel", "0", "--strategy", "kary"],
    "parallel for a sequential strategy": [*SEARCH, "--parallel", "4"],
    "max_trials 0": [*SEARCH, "--max-trials", "0"],
    "lam_high below lam_low": [*SEARCH, "--lam-low", "1e-3", "--lam-high", "1e-4"],
    "t_step 0": [*SEARCH, "--t-step", "0"],
    "negative gpus": [*SEARCH, "--gpus-per-trial", "-1"],
    "unknown flag": [*SEARCH, "--lambda", "0.1"],
    "output already holds a search": [*SEARCH, "--output", "taken"],
    "resume without a saved search": ["--resume", "--output", "empty"],
    "trial negative lam": ["trial", "--preset", "smoke", "--data-dir", "data", "--lam", "-0.01", "--t", "1.2"],
    "trial missing lam": ["trial", "--preset", "smoke", "--data-dir", "data", "--t", "1.2"],
    "trial unknown preset": ["trial", "--preset", "nope", "--data-dir", "data", "--lam", "0.01", "--t", "1.2"],
    "trial empty data folder": ["trial", "--preset", "smoke", "--data-dir", "empty", "--lam", "0.01", "--t", "1.2"],
    "trial unknown model": ["trial", "--preset", "smoke", "--data-dir", "data", "--model", "x", "--lam", "0.01",
                            "--t", "1.2"],
    "final negative lam": ["final", "--preset", "smoke", "--data-dir", "data", "--lam", "-1", "--t", "1.2"],
    "final missing data folder": ["final", "--preset", "smoke", "--data-dir", "nowhere", "--lam", "0.01", "--t", "1"],
}  # fmt: skip


@pytest.mark.parametrize("argv", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workdir, capsys, argv):
    before = _snapshot(workdir)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("polarsearch: error: ")
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err + out
    assert _snapshot(workdir) == before  # no mlflow.db, no outputs/, no mlruns/


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")
def test_gpus_the_cluster_lacks_is_an_error_before_anything_is_written(workdir, capsys):
    before = _snapshot(workdir)
    assert main([*SEARCH, "--gpus-per-trial", "1"]) == 2  # known once the (CPU-only) local Ray is up
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "polarsearch: error: --gpus-per-trial 1 but the Ray cluster has 0 GPUs"
    assert "Traceback" not in err
    assert _snapshot(workdir) == before


def test_error_messages_name_the_problem(workdir, capsys):
    for argv, words in [
        (BAD_INPUTS["delta equal to target"], "delta"),
        (BAD_INPUTS["unknown model"], "resnet9000"),
        (BAD_INPUTS["unknown key in preset"], "lamda"),
        (BAD_INPUTS["unknown strategy"], "bogo"),
        (BAD_INPUTS["parallel for a sequential strategy"], "one trial at a time"),
        (BAD_INPUTS["unreachable ray address"], "Ray"),
        (BAD_INPUTS["unreachable mlflow server"], "MLflow"),
        (BAD_INPUTS["trial negative lam"], "--lam"),
        (BAD_INPUTS["empty data folder"], "empty"),
    ]:
        assert main(argv) == 2
        assert words in capsys.readouterr().err


def test_help_lists_the_flags_and_subcommands(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--target-flops", "--delta", "--strategy", "--ray-address", "--mlflow-uri", "--skip-final",
                 "--resume", "--max-trials", "--lam-high", "trial --help"):  # fmt: skip
        assert flag in text
    assert main(["trial", "--help"]) == 0
    assert "--json" in capsys.readouterr().out


def test_trial_json_on_real_data(cifar10_dir, tmp_path, monkeypatch, capsys):
    from pruning.prunable import scaling_factors
    from trainers import models
    from trainers.config import load_config
    from trainers.trial import pruning_threshold

    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "trial"
    argv = ["trial", "--preset", "smoke", "--data-dir", str(cifar10_dir), "--lam", "0.02", "--t", "1.2",
            "--output", str(out_dir), "--json"]  # fmt: skip
    assert main(argv) == 0
    out, _ = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]  # every stdout line is one JSON object
    assert len(rows) >= 2
    assert all(set(r) == {"epoch", "flops_reduction", "threshold", "val_accuracy", "loss"} for r in rows)
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(0.0 <= r["flops_reduction"] < 1.0 and 0.0 <= r["val_accuracy"] <= 1.0 for r in rows)

    state = torch.load(out_dir / "model.pt", weights_only=True)
    config = load_config("smoke")
    model = models.build(config.model, 10)
    model.load_state_dict(state)  # strict: the whole trained network
    # The saved network is the one of the last epoch: its γ give the last reported threshold.
    assert pruning_threshold(scaling_factors(model), config) == pytest.approx(rows[-1]["threshold"])


def test_ctrl_c_during_a_trial_exits_130_with_one_line(cifar10_dir, tmp_path):
    argv = [sys.executable, "-m", "search.cli", "trial", "--preset", "smoke", "--data-dir", str(cifar10_dir),
            "--lam", "0.02", "--t", "1.2", "--output", str(tmp_path / "trial"), "--json", "--max-epochs", "4"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path) as proc:
        first = proc.stdout.readline()  # the first epoch is done: the trial is training
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert json.loads(first)["epoch"] == 1
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "polarsearch: interrupted" and "Traceback" not in err


def test_summary_table_lists_trials_winner_and_reason():
    outcome = SearchOutcome(
        trials=[TrialRow(0, 0.02, 1.2, 0.3, "stable", epochs=4, val_accuracy=0.4),
                TrialRow(1, 0.03, 1.2, None, "failed", epochs=2)],
        best=Trial(0, 0.02, 1.2, 0.3, "ok"), converged=False, reason="max_trials reached", output=Path("out"),
    )  # fmt: skip
    text = summary(outcome, 0.5, 0.05)
    lines = text.splitlines()
    assert any("0.02" in line and "0.300" in line and "stable" in line for line in lines)
    assert any("0.03" in line and "failed" in line for line in lines)
    assert "winner: lam=0.02 t=1.2 F=0.300 (|F-F*|=0.200, outside δ=0.05)" in text
    assert "stop reason: max_trials reached" in text
