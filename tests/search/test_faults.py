"""Faults, real: fake Ray GCS ports and a fake MLflow server on this machine, a tracker on a real
SQLite store; and (slow) a SIGKILLed trial worker, a SIGKILLed driver resumed, a full disk (a 2 MB
tmpfs) and two searches on one MLflow store, each with a real local Ray on the smoke preset.

Every error is one line on stderr (exit 2 for bad input, 1 for a failed search) and leaves nothing
half-written; every process a test starts is gone at its end.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient

from search.cli import main
from search.preflight import PreflightError, check_mlflow
from search.ray_cluster import RayAddressError, check_ray_address
from search.tracking import SearchTracker

REPO = Path(__file__).resolve().parents[2]
KIND = "tags.`polarsearch.kind`"


def _this_machine() -> str:
    """Where Ray connects for 127.0.0.1: this machine's own address (traffic stays on the machine)."""
    from ray._private.services import resolve_ip_for_localhost

    return resolve_ip_for_localhost("127.0.0.1")


@contextmanager
def _server(host: str, reply: bytes | None) -> Iterator[int]:
    """A TCP server on host: accepts, sends `reply` (None: says nothing) and keeps the connection open."""
    server = socket.socket()
    server.bind((host, 0))
    server.listen()
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                try:
                    conn.sendall(reply)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the thread
        server.close()
        for conn in held:
            conn.close()
        thread.join(5)


class _Html(BaseHTTPRequestHandler):
    body = b"<!doctype html>\n<html><head><title>Ray Dashboard</title></head>\n<body>not MLflow</body></html>\n"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


class _MlflowLike(_Html):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no experiment Default"}')


@contextmanager
def _http(handler: type, host: str = "127.0.0.1") -> Iterator[int]:
    server = HTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("host", "reply"),
    [
        ("machine", b"\x00\xffgarbage, not HTTP/2\r\n" * 4),
        ("machine", b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\n<html>"),
        ("machine", None),  # accepts and never answers: the deadline ends it
        ("loopback", b"HTTP/1.1 200 OK\r\n\r\n"),  # answers on 127.0.0.1, where Ray does not connect
    ],
    ids=["garbage", "http", "silent", "loopback-only"],
)
def test_a_port_that_is_not_a_ray_gcs_is_refused_within_the_deadline(host, reply):
    bind = _this_machine() if host == "machine" else "127.0.0.1"
    with _server(bind, reply) as port:
        start = time.monotonic()
        with pytest.raises(RayAddressError, match="no Ray GCS answers at 127.0.0.1") as info:
            check_ray_address(f"127.0.0.1:{port}", timeout=2)
        assert time.monotonic() - start < 10 and "\n" not in str(info.value)


def test_a_fake_gcs_through_the_command_is_one_line_and_writes_nothing(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with _http(_Html, _this_machine()) as port:  # a dashboard-like HTTP port, where Ray would connect
        argv = ["--target-flops", "0.5", "--preset", "smoke", "--data-dir", str(cifar10_dir),
                "--ray-address", f"127.0.0.1:{port}"]  # fmt: skip
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("polarsearch: error: no Ray GCS answers at 127.0.0.1:")
    assert not list(tmp_path.iterdir())


def test_mlflow_uri_is_asked_a_real_question(tmp_path):
    with _http(_Html) as port:
        with pytest.raises(PreflightError, match="is not an MLflow tracking server"):
            check_mlflow(f"http://127.0.0.1:{port}")
    with _http(_MlflowLike) as port:
        check_mlflow(f"http://127.0.0.1:{port}")  # MLflow's JSON answer, even an error, is MLflow
    with pytest.raises(PreflightError, match="unsupported scheme 's3'"):
        check_mlflow("s3://bucket/mlruns")
    store = tmp_path / "mlflow.db"
    tracker = SearchTracker(f"sqlite:///{store}", "e")  # a real store passes, before and after use
    check_mlflow(f"sqlite:///{store}", "e")
    tracker.client.delete_experiment(tracker.experiment_id)
    with pytest.raises(PreflightError, match="experiment 'e' .* is deleted"):  # MLflow would refuse its runs
        check_mlflow(f"sqlite:///{store}", "e")
    store.write_bytes(store.read_bytes()[:4096])  # truncated: SQLite's own check fails
    with pytest.raises(PreflightError, match="mlflow.db"):
        check_mlflow(f"sqlite:///{store}")


def test_tracker_ends_running_trials_killed_and_logs_an_epoch_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SearchTracker(uri, "faults")
    parent = tracker.start_search({"target": 0.5}, run_name="s")
    epoch = {"lam": 0.01, "t": 1.2, "flops_reduction": 0.2, "threshold": 0.1, "val_accuracy": 0.3, "loss": 2.0}
    tracker.log_epoch("a", {**epoch, "epoch": 1})
    tracker.log_epoch("a", {**epoch, "epoch": 2})
    tracker.log_epoch("a", {**epoch, "epoch": 2, "flops_reduction": 0.9})  # a retried worker reports epoch 2 again
    tracker.end_search("interrupted", "interrupted", None)
    client = MlflowClient(uri)
    (trial,) = client.search_runs([tracker.experiment_id], f"{KIND} = 'trial'")
    assert trial.info.status == "KILLED" and trial.data.tags["status"] == "interrupted"
    history = client.get_metric_history(trial.info.run_id, "flops_reduction")
    assert [(m.step, m.value) for m in history] == [(1, 0.2), (2, 0.2)]
    assert client.get_run(parent).info.status == "KILLED"

    resumed = SearchTracker(uri, "faults")  # --resume: the killed trial continues and ends once
    resumed.resume_search(parent)
    resumed.log_epoch("a", {**epoch, "epoch": 3})
    resumed.end_trial("a", {**epoch, "epoch": 3, "status": "stable", "message": ""})
    trial = client.get_run(trial.info.run_id)
    assert trial.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "flops_reduction")] == [1, 2, 3]

    resumed.log_epoch("b", {**epoch, "epoch": 1})  # a trial that failed (a dead network): no NaN at its last step
    resumed.end_trial("b", {**epoch, "epoch": 1, "flops_reduction": float("nan"), "status": "failed", "message": "x"})
    (failed,) = client.search_runs([tracker.experiment_id], f"{KIND} = 'trial' and tags.status = 'failed'")
    history = client.get_metric_history(failed.info.run_id, "flops_reduction")
    assert [m.step for m in history if math.isfinite(m.value)] == [1]  # its epoch once; then its F: NaN
    assert math.isnan(failed.data.metrics["flops_reduction"])


# ---------------------------------------------------------------------------------------------
# Slow: a real search on a real local Ray, each under ~2 minutes.


def _search(tmp_path: Path, *extra: str, output: str = "out") -> list[str]:
    return [sys.executable, "-m", "search.cli", "--target-flops", "0.5", "--delta", "0.01", "--preset", "smoke",
            "--skip-final", "--output", str(tmp_path / output), "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--experiment", "faults", "--subset", "400", "--val-size", "200", *extra]  # fmt: skip


@contextmanager
def _started(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
             stop_stale: bool = True) -> Iterator[subprocess.Popen]:  # fmt: skip
    """A polarsearch process; SIGKILLed with what it started if the test ends before it does."""
    with open(cwd / f"stderr-{len(list(cwd.glob('stderr-*')))}.txt", "w+") as err:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})  # fmt: skip
        proc.stderr_file = err  # type: ignore[attr-defined]
        try:
            yield proc
        finally:
            if proc.poll() is None:
                _kill_tree(proc.pid)
                proc.wait(30)
            if stop_stale:
                _stop_stale()


def _stderr(proc: subprocess.Popen) -> str:
    proc.stderr_file.flush()  # type: ignore[attr-defined]
    return Path(proc.stderr_file.name).read_text()  # type: ignore[attr-defined]


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc), deepest last."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _kill_tree(pid: int) -> None:
    for p in [pid, *_children(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def _stop_stale() -> None:
    from search.ray_cluster import stop_stale_ray

    stop_stale_ray()


def _rows(tune_dir: Path) -> list[list[dict]]:
    """Every trial's reported rows so far (Tune's result.json files)."""
    out = []
    for path in sorted(tune_dir.glob("*/result.json")):
        try:
            out.append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
        except ValueError:  # a line being written
            out.append([])
    return out


def _wait(condition, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the search ended early ({proc.returncode}): {_stderr(proc)[-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.3)


def _trial_worker(driver: int) -> int | None:
    """The Ray worker process that runs a trial of this driver's search (a descendant of its raylet)."""
    for pid in _children(driver):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if title.startswith("ray::") and any(n in title for n in ("PolarizedTrial", "ImplicitFunc", "Trainable")):
            return pid
    return None


def test_a_trial_the_resumed_tuner_lost_continues_its_run(tmp_path):
    """A driver SIGKILLed before Tune saved a new trial's state: on --resume the strategy asks for the same
    proposal again under a new Tune trial id; it continues the killed driver's run (one run per proposal,
    each epoch once), while another point with the same number gets a run of its own."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SearchTracker(uri, "faults")
    parent = tracker.start_search({"target": 0.5}, run_name="s")
    epoch = {"lam": 0.03, "t": 1.2, "flops_reduction": 0.2, "threshold": 0.1, "val_accuracy": 0.3, "loss": 2.0, "trial": 2}
    tracker.log_epoch("lost", {**epoch, "epoch": 1})  # then the driver is killed: no end, run left RUNNING

    resumed = SearchTracker(uri, "faults")
    resumed.resume_search(parent)
    for e in (1, 2):  # the new trial starts again from epoch 1 (Tune had no checkpoint of it)
        resumed.log_epoch("again", {**epoch, "epoch": e})
    resumed.end_trial("again", {**epoch, "epoch": 2, "status": "stable", "message": ""})
    resumed.log_epoch("other", {**epoch, "lam": 0.05, "epoch": 1})  # number 2 again, another λ: not the same trial
    client = MlflowClient(uri)
    runs = client.search_runs([tracker.experiment_id], f"{KIND} = 'trial'")
    assert sorted(r.data.params["lam"] for r in runs) == ["0.03", "0.05"]
    (run,) = [r for r in runs if r.data.params["lam"] == "0.03"]
    assert run.info.status == "FINISHED" and run.data.tags["polarsearch.trial_id"] == "again"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "flops_reduction")] == [1, 2]


@pytest.mark.slow
def test_sigkill_of_a_trial_worker_is_retried_from_its_checkpoint(cifar10_dir, tmp_path):
    argv = _search(tmp_path, "--data-dir", str(cifar10_dir), "--max-trials", "1", "--min-epochs", "3",
                   "--max-epochs", "4", "--patience", "2")  # fmt: skip
    with _started(argv, tmp_path) as proc:
        tune_dir = tmp_path / "out" / "ray" / "tune"
        _wait(lambda: any(any(r.get("epoch", 0) >= 1 for r in rows) for rows in _rows(tune_dir)), 150, proc)
        worker = _trial_worker(proc.pid)
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        out, _ = proc.communicate(timeout=180)
        err = _stderr(proc)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    (row,) = result["trials"]
    assert row["epochs"] >= 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (trial,) = client.search_runs([client.get_experiment_by_name("faults").experiment_id], f"{KIND} = 'trial'")
    history = client.get_metric_history(trial.info.run_id, "flops_reduction")
    steps = [m.step for m in history if math.isfinite(m.value)]  # a failed trial ends on NaN, its F
    assert steps == list(range(1, len(steps) + 1))  # the retried epochs logged once each
    (rows,) = _rows(tmp_path / "out" / "ray" / "tune")
    epochs = [r["epoch"] for r in rows if r.get("status") == "running"]
    assert epochs == sorted(set(epochs)) and len(epochs) >= 2  # resumed after its checkpoint, not from epoch 1
    assert "worker process has died" in err


@pytest.mark.slow
def test_sigkill_of_the_driver_then_resume_keeps_settings_and_finished_trials(cifar10_dir, tmp_path):
    argv = _search(tmp_path, "--data-dir", str(cifar10_dir), "--max-trials", "2", "--max-epochs", "2",
                   "--min-epochs", "1")  # fmt: skip
    tune_dir = tmp_path / "out" / "ray" / "tune"
    try:
        _sigkill_and_resume(argv, tmp_path, tune_dir)
    finally:
        _stop_stale()


def _sigkill_and_resume(argv: list[str], tmp_path: Path, tune_dir: Path) -> None:
    with _started(argv, tmp_path, stop_stale=False) as proc:  # its leftovers are for the resume to stop
        _wait(lambda: len([rows for rows in _rows(tune_dir) if rows]) >= 2, 170, proc)  # trial 2 has run an epoch
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        time.sleep(2)
        stale = [p for p in _children(1) if _session_of(p, proc.pid)]
    assert stale  # Ray's agents outlive a SIGKILLed driver
    finished_before = {json.dumps([r["lam"], r["t"]]) for rows in _rows(tune_dir)
                       for r in rows if r.get("status") not in (None, "running")}  # fmt: skip
    assert finished_before

    # a flag that contradicts the saved search is refused; without it every setting comes back
    refused = subprocess.run([sys.executable, "-m", "search.cli", "--resume", "--output", str(tmp_path / "out"),
                              "--epochs", "9"], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--epochs 9" in refused.stderr
    with _started([sys.executable, "-m", "search.cli", "--resume", "--output", str(tmp_path / "out")], tmp_path) as again:
        again.communicate(timeout=240)
        err = _stderr(again)
    assert again.returncode == 0, err[-3000:]
    assert not [p for p in stale if Path(f"/proc/{p}").exists()]  # the killed driver's Ray was stopped
    assert not (tmp_path / "out" / "final").exists()  # --skip-final was kept
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("faults").experiment_id
    (parent,) = client.search_runs([experiment], f"{KIND} = 'search'")
    assert parent.info.status in ("FINISHED", "FAILED") and parent.data.tags["status"] in ("converged", "stopped")
    trials = client.search_runs([experiment], f"{KIND} = 'trial'")
    points = [json.dumps([float(t.data.params["lam"]), float(t.data.params["t"])]) for t in trials]
    assert len(points) == len(set(points))  # no trial ran twice
    assert all(t.info.status in ("FINISHED", "FAILED") for t in trials)
    for t in trials:  # each epoch once, also for the trial the SIGKILL interrupted (a failed trial ends on NaN)
        history = client.get_metric_history(t.info.run_id, "flops_reduction")
        steps = [m.step for m in history if math.isfinite(m.value)]
        assert steps == list(range(1, len(steps) + 1))
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert {json.dumps([r["lam"], r["t"]]) for r in result["trials"]} >= finished_before


def _session_of(pid: int, driver: int) -> bool:
    """Whether `pid` is a process of the Ray that `driver` started (its session folder, named after
    the driver's pid, holds polarsearch's driver mark)."""
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    for link in links:
        if "/session_" in link:
            session = Path(link[: link.index("/", link.index("/session_") + 1)])
            if session.name.endswith(f"_{driver}") and (session / "polarsearch-driver").is_file():
                return True
    return False


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MB tmpfs (CI runs as root); unmounted at the end."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_fails_the_search_with_the_reason(cifar10_dir, tmp_path, full_disk):
    argv = _search(tmp_path, "--data-dir", str(cifar10_dir), "--max-trials", "1", "--max-epochs", "2",
                   "--min-epochs", "1", output="full/out")  # fmt: skip
    with _started(argv, tmp_path) as proc:
        out, _ = proc.communicate(timeout=240)
        err = _stderr(proc)
    assert proc.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("polarsearch: error: the search failed: ") and "No space left on device" in last
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("faults").experiment_id
    (parent,) = client.search_runs([experiment], f"{KIND} = 'search'")
    assert parent.info.status == "FAILED" and "No space left on device" in parent.data.tags["stop_reason"]
    assert all(t.info.status != "RUNNING" for t in client.search_runs([experiment], f"{KIND} = 'trial'"))
    out_dir = full_disk / "out"
    assert not list(out_dir.glob(".*.tmp"))  # nothing half-written
    for name in ("search.json", "result.json"):
        if (out_dir / name).exists():
            json.loads((out_dir / name).read_text())


@pytest.mark.slow
def test_two_searches_on_one_mlflow_store(cifar10_dir, tmp_path):
    extra = ("--data-dir", str(cifar10_dir), "--max-trials", "1", "--max-epochs", "2", "--min-epochs", "1",
             "--no-reuse-trials")  # each trains its own trial, whichever ends first
    with _started(_search(tmp_path, *extra), tmp_path) as first, \
            _started(_search(tmp_path, *extra, output="out2"), tmp_path) as second:  # fmt: skip
        first.communicate(timeout=240)
        second.communicate(timeout=240)
        errors = (_stderr(first), _stderr(second))
    assert (first.returncode, second.returncode) == (0, 0), [e[-2000:] for e in errors]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("faults").experiment_id
    parents = client.search_runs([experiment], f"{KIND} = 'search'")
    assert sorted(p.info.run_name for p in parents) == ["out", "out2"]
    for parent in parents:
        trials = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
                                                  f" and {KIND} = 'trial'")  # fmt: skip
        assert len(trials) == 1 and trials[0].info.status in ("FINISHED", "FAILED")
        result = json.loads((tmp_path / parent.info.run_name / "result.json").read_text())
        assert result["parent_run_id"] == parent.info.run_id


def test_a_local_job_stopped_midway_is_one_line(capsys):
    from search.local import job_error
    from trainers.data import DataError

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"loaders.py\", line 1\ntrainers.data.folders.DataError: cannot decode image "
                        "/d/train/a/bad.png: cannot identify image file")  # fmt: skip
    assert job_error(wrapped) == 2
    assert job_error(OSError(28, "No space left on device")) == 1
    assert capsys.readouterr().err.splitlines() == [
        "polarsearch: error: cannot decode image /d/train/a/bad.png: cannot identify image file",
        "polarsearch: error: OSError: [Errno 28] No space left on device",
    ]


def test_json_is_written_strictly_and_whole(tmp_path):
    from search.outcome import write_json

    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

    write_json(tmp_path / "result.json", {"f": math.nan, "rows": [{"acc": math.inf}, 0.5]})
    assert strict((tmp_path / "result.json").read_text()) == {"f": None, "rows": [{"acc": None}, 0.5]}
    (tmp_path / "taken" / "x").mkdir(parents=True)  # a folder where the file should go: the rename fails
    with pytest.raises(OSError):
        write_json(tmp_path / "taken", {"f": 1.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "taken"]  # no temporary file left
