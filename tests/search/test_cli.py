"""The polarsearch command: the bad-input matrix (one line, exit 2, nothing written) and a real trial."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from search.cli import main
from search.outcome import SearchOutcome, SearchSpec, TrialRow, write_spec
from search.report import summary
from search.settings import SearchSettings
from search.strategies import Trial
from trainers.config import load_config, preset_section


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(root: Path, classes: dict[str, tuple[int, int]], side: int = 8) -> Path:
    """An ImageFolder tree of real PNGs: {class: (train images, test images)}."""
    for name, counts in classes.items():
        for split, count in zip(("train", "test"), counts, strict=True):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (side, side), (len(name) * 40 % 256, i * 30 % 256, 7)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def workdir(tmp_path, tmp_path_factory, monkeypatch):
    """A working folder with a tiny valid ImageFolder tree (enough for the data check), bad trees, bad
    presets, a saved search and an empty folder; the tests run from it and compare its contents before
    and after. The decode cache lives outside it."""
    monkeypatch.setenv("POLARSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    _tree(tmp_path / "data", {"cat": (8, 2), "dog": (8, 2)})
    _tree(tmp_path / "onecls", {"cat": (8, 2)})
    _tree(tmp_path / "emptycls", {"cat": (8, 2), "dog": (8, 2), "ghost": (0, 0)})
    for name, content in (("corrupt", b"\xff\xd8\xff\xe0 not a whole jpeg"), ("zerobyte", b"")):
        _tree(tmp_path / name, {"cat": (8, 2), "dog": (8, 2)})
        (tmp_path / name / "train" / "dog" / "bad.jpg").write_bytes(content)
    (tmp_path / "empty").mkdir()
    (tmp_path / "malformed.yaml").write_text("model: [resnet20\n")
    (tmp_path / "unknown_key.yaml").write_text("model: resnet20\nlamda: 0.1\n")
    (tmp_path / "not_a_mapping.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "search.json").write_text("{}")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "search.json").write_text('{"config": {"model": "resnet20"')
    (tmp_path / "afile").write_text("x")
    (tmp_path / "corrupt.db").write_bytes(b"this is not an SQLite database" * 100)
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE notes (x)")
    db.close()
    config = load_config("smoke", {"data_dir": "data", "subset": 8, "val_size": 4})
    spec = SearchSpec(config, SearchSettings(**{**preset_section("smoke"), "target": 0.5}), output=tmp_path / "saved")
    (tmp_path / "saved").mkdir()
    write_spec(spec, "0123abcd", "sqlite:///nowhere/mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


SMALL = ["--dataset", "imagefolder", "--subset", "8", "--val-size", "4"]  # the smoke preset on the tiny tree
SEARCH = ["--target-flops", "0.5", "--preset", "smoke", "--data-dir", "data", *SMALL]
TRIAL = ["trial", "--preset", "smoke", "--lam", "0.01", "--t", "1.2", *SMALL]
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
    # issue 10: what a new user tried beyond the above
    "gpus nan": [*SEARCH, "--gpus-per-trial", "nan"],
    "gpus inf": [*SEARCH, "--gpus-per-trial", "inf"],
    "output is an existing file": [*SEARCH, "--output", "afile"],
    "output under a file": [*SEARCH, "--output", "afile/out"],
    "trial output is an existing file": [*TRIAL, "--data-dir", "data", "--output", "afile"],
    "mlflow unsupported scheme": [*SEARCH, "--mlflow-uri", "ftp://127.0.0.1/mlruns"],
    "mlflow corrupt sqlite store": [*SEARCH, "--mlflow-uri", "sqlite:///corrupt.db"],
    "mlflow sqlite that is not mlflow's": [*SEARCH, "--mlflow-uri", "sqlite:///other.db"],
    "mlflow sqlite path is a folder": [*SEARCH, "--mlflow-uri", "sqlite:///empty"],
    "seed beyond 2**64": [*SEARCH, "--seed", str(2**64 + 1)],
    "seed 2**32": [*SEARCH, "--seed", str(2**32)],
    "seed negative": [*SEARCH, "--seed", "-1"],
    "nan learning rate": [*SEARCH, "--lr", "nan"],
    "inf lam_high": [*SEARCH, "--lam-high", "inf"],
    "nan target": ["--target-flops", "nan", "--data-dir", "data"],
    "trial nan lam": [*TRIAL[:4], "nan", "--t", "1.2", "--data-dir", "data"],
    "trial inf t": [*TRIAL[:6], "inf", "--data-dir", "data"],
    "resume damaged search.json": ["--resume", "--output", "damaged"],
    "resume with another epochs": ["--resume", "--output", "saved", "--epochs", "3"],
    "resume with another target": ["--resume", "--output", "saved", "--target-flops", "0.3"],
    "resume with another strategy": ["--resume", "--output", "saved", "--strategy", "kary"],
    "resume adding skip-final": ["--resume", "--output", "saved", "--skip-final"],
    "resume with another data folder": ["--resume", "--output", "saved", "--data-dir", "onecls"],
    "one class only": [*SEARCH, "--data-dir", "onecls"],
    "stray empty class folder": [*SEARCH, "--data-dir", "emptycls"],
    "corrupt jpeg": [*SEARCH, "--data-dir", "corrupt"],
    "0-byte jpeg": [*SEARCH, "--data-dir", "zerobyte"],
    "subset larger than the data": [*SEARCH, "--subset", "100"],
    "val_size larger than the data": [*SEARCH, "--subset", "4", "--val-size", "40"],
    "downsample larger than the images": [*SEARCH, "--downsample", "16"],
    "cifar10 with 2 class folders": [*SEARCH, "--dataset", "cifar10"],
    "trial on corrupt data": [*TRIAL, "--data-dir", "corrupt"],
    "trial on one class": [*TRIAL, "--data-dir", "onecls"],
    "final on a 0-byte jpeg": ["final", *TRIAL[1:], "--data-dir", "zerobyte"],
    "final subset too large": ["final", *TRIAL[1:], "--data-dir", "data", "--subset", "100"],
    **({} if torch.cuda.is_available() else {
        "device cuda without a GPU": [*SEARCH, "--device", "cuda"],
        "trial device cuda:1 without a GPU": [*TRIAL, "--data-dir", "data", "--device", "cuda:1"],
    }),
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


# What each error of issue 10's cases names (the matrix above checks the form: one line, exit 2).
REASONS = {
    "gpus nan": "--gpus-per-trial", "output is an existing file": "not a folder", "output under a file": "not a folder",
    "trial output is an existing file": "not a folder", "mlflow unsupported scheme": "unsupported scheme 'ftp'",
    "mlflow corrupt sqlite store": "not a usable SQLite database", "mlflow sqlite that is not mlflow's": "not an MLflow store",
    "mlflow sqlite path is a folder": "not a file", "seed beyond 2**64": "seed must be in [0, 2**32)",
    "seed 2**32": "seed must be in", "nan learning rate": "lr must be a finite number",
    "inf lam_high": "lam_high must be a finite number", "trial nan lam": "--lam",
    "resume damaged search.json": "search.json is damaged", "resume with another epochs": "--epochs 3 but the saved search has 4",
    "resume with another target": "--target-flops 0.3 but the saved search has 0.5",
    "resume with another strategy": "--strategy kary", "resume adding skip-final": "--skip-final True but the saved search has False",
    "resume with another data folder": "--data-dir onecls", "one class only": "at least 2",
    "stray empty class folder": "ghost holds no images", "corrupt jpeg": "cannot decode image corrupt/train/dog/bad.jpg",
    "0-byte jpeg": "zerobyte/train/dog/bad.jpg: the file is empty", "subset larger than the data": "subset 100",
    "val_size larger than the data": "val_size 40", "downsample larger than the images": "downsample 16",
    "cifar10 with 2 class folders": "cifar10 has 10 classes", "trial on corrupt data": "bad.jpg",
    "trial on one class": "at least 2", "final on a 0-byte jpeg": "the file is empty", "final subset too large": "subset 100",
    "device cuda without a GPU": "no CUDA GPU", "trial device cuda:1 without a GPU": "--device cuda:1",
}  # fmt: skip


@pytest.mark.parametrize("case", [c for c in REASONS if c in BAD_INPUTS])
def test_issue_10_errors_name_their_reason(workdir, capsys, case):
    assert main(BAD_INPUTS[case]) == 2
    err = capsys.readouterr().err
    assert REASONS[case] in err, err


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
            "--lam", "0.02", "--t", "1.2", "--output", str(tmp_path / "trial"), "--json",
            "--epochs", "40", "--max-epochs", "40", "--min-epochs", "40"]  # still training when Ctrl-C comes
    # The child gets SIGINT's default action whatever this process inherited: Python installs its
    # KeyboardInterrupt handler only where SIGINT is not ignored at start-up.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                          preexec_fn=default_sigint) as proc:  # fmt: skip
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
    assert "cost: 2 trials, 6 trial-epochs trained\n" in text


def test_summary_counts_the_trials_of_earlier_searches_apart():
    rows = [TrialRow(-1, 1e-3, 1.2, 0.62, "earlier", epochs=24), TrialRow(-2, 2.5e-4, 1.2, 0.2, "earlier", epochs=30),
            TrialRow(0, 6e-4, 1.2, 0.52, "stable", epochs=27)]  # fmt: skip
    outcome = SearchOutcome(trials=rows, best=Trial(0, 6e-4, 1.2, 0.52, "ok"), converged=True, reason="converged",
                            output=Path("out"))  # fmt: skip
    text = summary(outcome, 0.5, 0.05)
    assert "cost: 1 trial, 27 trial-epochs trained (2 trials of earlier searches reused: 54 trial-epochs" in text
    assert sum(line.endswith("earlier") for line in text.splitlines()) == 2
