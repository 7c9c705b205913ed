"""A search beyond one process: a second Ray node, logical GPUs, a real MLflow tracking server.

Real parts, on loopback only: `ray start` nodes and an `mlflow server`, each started here in its own
process group and killed with it at teardown (never `ray stop`, which stops every Ray on the
machine). The nodes take the loopback addresses 127.0.0.2, 127.0.0.3...: Ray turns 127.0.0.1 into
the machine's outside address whenever multi-node clusters are allowed, and leaves the rest of
127.0.0.0/8 alone. polarsearch runs as the user runs it, `polarsearch --ray-address ...`, in a
subprocess with the cluster's token. Which node ran a trial comes from Ray's state API: the actor
whose pid is the pid in the trial's result.json.

Slow (about a minute per search on 2 CPU cores); run with the rest of the suite in CI.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
SEARCH = ["--preset", "smoke", "--target-flops", "0.5", "--delta", "0.1", "--strategy", "kary", "--parallel", "2",
          "--max-trials", "2", "--skip-final"]  # fmt: skip


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A free port never handed out before in this session: Ray refuses a node whose components were
    given the same port twice (seen: the dashboard's port drawn again for an agent)."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for(check, timeout: float, what: str, log=lambda: "") -> None:
    """Poll `check` until it is true; on timeout, say what was awaited with `log()` (read then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s\n{log()}")


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def serves(url: str) -> bool:
    """Whether `url` answers 200 over HTTP (no proxy: loopback only)."""
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


class Processes:
    """Processes started in their own sessions, each killed with its whole group at close()."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.started = logs, []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((process, log))
        return process

    def close(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for process, _ in reversed(self.started):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            for process, _ in self.started:
                try:
                    process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for _, log in self.started:
            log.close()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()[-3000:]


class RayCluster:
    """A head on 127.0.0.2 and worker nodes on 127.0.0.3, 127.0.0.4...; token auth on."""

    def __init__(self, processes: Processes, temp_dir: str) -> None:
        self.processes, self.temp_dir = processes, temp_dir
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0",
                        NO_PROXY="127.0.0.0/8,localhost", no_proxy="127.0.0.0/8,localhost")  # fmt: skip
        self.host = "127.0.0.2"
        self.port, self.dashboard_port = free_port(self.host), free_port(self.host)
        self.address, self.dashboard = f"{self.host}:{self.port}", f"http://{self.host}:{self.dashboard_port}"
        self.nodes = 0

    def start_head(self, cpus: int, gpus: int = 0) -> None:
        self._start(["--head", f"--node-ip-address={self.host}", f"--port={self.port}", f"--temp-dir={self.temp_dir}",
                     f"--dashboard-host={self.host}", f"--dashboard-port={self.dashboard_port}"], cpus, gpus)
        wait_for(lambda: answers(self.host, self.dashboard_port), 60, "the Ray head", lambda: self.processes.log("node0"))

    def add_worker(self, cpus: int) -> None:
        self._start([f"--address={self.address}", f"--node-ip-address=127.0.0.{2 + self.nodes}"], cpus, 0)

    def _start(self, args: list[str], cpus: int, gpus: int) -> None:
        host = f"127.0.0.{2 + self.nodes}"  # the node's own address
        ports = [f"--dashboard-agent-listen-port={free_port(host)}", f"--runtime-env-agent-port={free_port(host)}",
                 f"--metrics-export-port={free_port(host)}"]  # fmt: skip
        argv = [RAY, "start", "--block", *args, *ports, f"--num-cpus={cpus}", f"--num-gpus={gpus}",
                "--disable-usage-stats"]  # fmt: skip
        self.processes.start(f"node{self.nodes}", argv, self.env)
        self.nodes += 1

    def wait_nodes(self, count: int) -> dict[str, str]:
        """The alive nodes, id -> "head" or "worker", once there are `count` of them."""
        nodes: dict[str, str] = {}

        def enough() -> bool:
            alive = [n for n in self.state("nodes") if n["state"] == "ALIVE"]
            nodes.clear()
            nodes.update({n["node_id"]: "head" if n["is_head_node"] else "worker" for n in alive})
            return len(nodes) >= count

        wait_for(enough, 90, f"{count} Ray nodes")
        return nodes

    def state(self, kind: str) -> list[dict]:
        """Ray's state API (`ray.util.state.list_<kind>`), asked from a process holding the cluster's token."""
        code = (f"import json; from ray.util.state import list_{kind} as ls; "
                f"print(json.dumps([x.__dict__ if hasattr(x, '__dict__') else x "
                f"for x in ls(address={self.dashboard!r}, detail=True, limit=10000, raise_on_missing_output=False)],"
                " default=str))")  # fmt: skip
        done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode:
            return []
        return json.loads(done.stdout.strip().splitlines()[-1])

    def polarsearch(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "search.cli", "--ray-address", self.address, *args]
        done = subprocess.run(argv, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done


@pytest.fixture
def work() -> Iterator[Path]:
    """A folder of this test's own for outputs, stores and logs, removed at the end. Not pytest's
    tmp_path: another pytest session on the same machine prunes old base temp folders, servers' files
    included, while this one still runs."""
    with tempfile.TemporaryDirectory(prefix="polarsearch-cluster-") as folder:
        yield Path(folder)


@pytest.fixture
def processes(work: Path) -> Iterator[Processes]:
    logs = work / "logs"
    logs.mkdir()
    started = Processes(logs)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def cluster(processes: Processes) -> Iterator[RayCluster]:
    # Ray's socket paths must stay short: a temp folder of its own under /tmp, not pytest's tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    try:
        yield RayCluster(processes, temp_dir)
    finally:
        processes.close()
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def trial_results(output: Path) -> list[list[dict]]:
    """Each trial's reported rows, from Tune's result.json files under DIR/ray/."""
    return [[json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for path in sorted((output / "ray").rglob("result.json"))]  # fmt: skip


def trial_nodes(cluster: RayCluster, output: Path) -> list[str]:
    """The id of the node each trial ran on: the node of the Ray actor with the trial's pid."""
    actor_nodes = {a["pid"]: a["node_id"] for a in cluster.state("actors") if a.get("pid")}
    return [actor_nodes[rows[-1]["pid"]] for rows in trial_results(output)]


def test_trials_run_on_a_second_node_and_log_to_a_tracking_server(cifar10_dir, cluster, processes, work):
    """One CPU on the head, one on a worker, two trials at once: one trial on each node; the search's
    parent run and trial runs land in a real `mlflow server` (REST API on a loopback port)."""
    port = free_port()
    store = work / "mlflow"
    store.mkdir()
    processes.start("mlflow", [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                               "--artifacts-destination", str(store / "artifacts")], cluster.env)  # fmt: skip
    cluster.start_head(cpus=1)
    cluster.add_worker(cpus=1)
    nodes = cluster.wait_nodes(2)
    uri = f"http://127.0.0.1:{port}"
    wait_for(lambda: serves(f"{uri}/health"), 120, "the MLflow server", lambda: processes.log("mlflow"))
    cluster.polarsearch([*SEARCH, "--data-dir", str(cifar10_dir), "--output", str(work / "out"),
                         "--mlflow-uri", uri, "--experiment", "cluster"], cwd=work)  # fmt: skip

    ran_on = trial_nodes(cluster, work / "out")
    print("trials ran on:", [f"{nodes.get(node, '?')} {node}" for node in ran_on])  # shown by pytest -rP
    assert len(ran_on) == 2 and set(ran_on) == set(nodes), (ran_on, nodes)

    rest = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def api(path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=json.dumps(body).encode() if body else None,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with rest.open(request, timeout=30) as response:
            return json.loads(response.read())

    experiment = api("experiments/get-by-name?experiment_name=cluster")["experiment"]["experiment_id"]
    runs = api("runs/search", {"experiment_ids": [experiment], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    (parent,) = [run for run, tag in zip(runs, tags, strict=True) if tag.get("polarsearch.kind") == "search"]
    trials = [tag for tag in tags if tag.get("polarsearch.kind") == "trial"]
    # Ended (FINISHED, or FAILED when the target was missed), not left RUNNING by a driver on another node.
    assert len(trials) == 2 and parent["info"]["status"] in ("FINISHED", "FAILED") and parent["info"]["end_time"]
    assert all(tag["mlflow.parentRunId"] == parent["info"]["run_id"] for tag in trials)
    # each trial run names the node that trained it, as Ray's state API saw it
    assert {tag["polarsearch.node_id"] for tag in trials} == set(ran_on)


def test_half_a_gpu_per_trial_packs_two_trials_on_one_gpu(cifar10_dir, cluster, work):
    """A head declaring one logical GPU (no CUDA needed: Ray only counts it); --gpus-per-trial 0.5 lets
    Ray schedule both trials of a round at once on it, each holding half of the GPU."""
    cluster.start_head(cpus=4, gpus=1)
    cluster.wait_nodes(1)
    cluster.polarsearch([*SEARCH, "--gpus-per-trial", "0.5", "--data-dir", str(cifar10_dir),
                         "--output", str(work / "out"), "--mlflow-uri", f"sqlite:///{work / 'mlflow.db'}"],
                        cwd=work)  # fmt: skip

    results = trial_results(work / "out")
    assert len(results) == 2
    # Each trial's span, from its first report back by that epoch's duration to its last report.
    spans = [(rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"]) for rows in results]
    first = min(start for start, _ in spans)
    print("trial spans, s after the first start:", [(round(a - first, 1), round(b - first, 1)) for a, b in spans])
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans

    pids = {rows[-1]["pid"] for rows in results}
    actors = [a for a in cluster.state("actors") if a.get("pid") in pids]
    assert len(actors) == 2
    for actor in actors:  # each in a placement group of its own, holding half of the GPU
        held = actor.get("required_resources") or {}
        gpus = [v for k, v in held.items() if k.startswith("GPU_group_") and k.count("_") == 2]
        assert gpus == [0.5], held
        print("trial actor", actor["actor_id"], "pid", actor["pid"], "holds GPU", gpus[0], "of the head's 1")
