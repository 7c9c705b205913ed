"""A search whose trials are data-parallel (2 gloo workers through Ray Train inside each Tune trial):
real CIFAR-10 (the smoke preset), a real local Ray, a real SQLite MLflow store.

One search of two trials checks both promises of issue 16: while the first trial trains, one of its
Ray Train workers is killed (SIGKILL, a real process) - that trial fails with the reason as its
message and the search goes on; the second trial completes, and each trial is one MLflow run with
one value per epoch (rank 0 reports; the other replica's reports never reach Tune). (The final job
on 2 workers: tests/trainers/test_distributed.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from search.cli import main

pytestmark = pytest.mark.slow
KIND = "tags.`polarsearch.kind`"


def _train_workers() -> list[int]:
    """Pids of the Ray Train worker processes of this test's Ray (their process title names the actor;
    the local Ray's processes descend from this one), not of another Ray on the machine."""
    table = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in table.splitlines() if line.strip()]
    parent = {int(row[0]): int(row[1]) for row in rows}

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = parent.get(pid, 1)
        return False

    return [int(row[0]) for row in rows if len(row) == 3 and "RayTrainWorker" in row[2] and ours(int(row[0]))]


def _kill_a_worker_once_training(tune_dir: Path, killed: list[int], timeout: float = 300.0) -> None:
    """SIGKILL one Ray Train worker as soon as the first trial has reported an epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in tune_dir.glob("*/result.json"):
            try:
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            except ValueError:
                continue
            workers = _train_workers()
            if rows and workers:
                os.kill(max(workers), signal.SIGKILL)
                killed.append(max(workers))
                return
        time.sleep(0.2)


def test_data_parallel_trials_in_a_search(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_once_training, args=(tmp_path / "out" / "ray" / "tune", killed),
                              daemon=True)  # fmt: skip
    killer.start()
    argv = ["--target-flops", "0.5", "--delta", "0.01", "--preset", "smoke", "--data-dir", str(cifar10_dir),
            "--max-trials", "2", "--workers-per-trial", "2", "--skip-final", "--output", "out",
            "--experiment", "ddp", "--no-early-decisions",  # the killed trial must not end early first
            "--epochs", "6", "--min-epochs", "6", "--max-epochs", "6"]  # nor be stable before the kill  # fmt: skip
    code = main(argv)
    out, err = capsys.readouterr()
    killer.join(timeout=1)
    assert code == 0, err[-3000:]
    assert killed, "no Ray Train worker was seen while the first trial trained"

    client = MlflowClient("sqlite:///mlflow.db")
    experiment = client.get_experiment_by_name("ddp")
    trials = client.search_runs([experiment.experiment_id], f"{KIND} = 'trial'", order_by=["attributes.start_time ASC"])
    assert len(trials) == 2  # one run per trial: the second replica logs nothing
    first, second = trials
    assert first.data.tags["status"] == "failed"
    message = first.data.tags["message"]
    assert message.startswith("data-parallel trial failed: worker rank ") and "died" in message.lower(), message
    assert second.data.tags["status"] in ("stable", "max_epochs", "decided", "failed")
    epochs = int(second.data.metrics["epochs"])
    assert epochs >= 2
    for key in ("flops_reduction", "val_accuracy"):
        steps = [m.step for m in client.get_metric_history(second.info.run_id, key)]
        assert steps == list(range(1, epochs + 1)), key  # once per epoch, not once per worker
    rows = [json.loads(line) for path in (tmp_path / "out" / "ray" / "tune").glob("*/result.json")
            for line in path.read_text().splitlines() if line.strip()]  # fmt: skip
    running = [r for r in rows if r.get("status") == "running"]
    assert running and all(r["workers"] == 2 and r["images_per_s"] > 0 for r in running)  # over both workers
