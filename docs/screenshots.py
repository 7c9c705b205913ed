"""Screenshots of what a person sees of a search: Ray's dashboard while it runs, MLflow after.

    apt-get install chromium && .venv/bin/pip install -e ".[screenshots]"
    .venv/bin/python docs/screenshots.py --data-dir ../shared/data/cifar10      # or: make screenshots

It runs a real `smoke` search (three trials, the final job) in a temporary folder, takes the Ray
dashboard's Jobs and Actors pages while the trials run, then serves the search's MLflow store with
`mlflow ui` and takes the runs table, the charts, the search's run page, a trial's artifacts and
MLflow's compare view; the search's console is saved beside them (console.txt). Everything is on
127.0.0.1. Playwright drives Debian's chromium (its own browser downloads are not needed).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1440, "height": 860}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--keep", action="store_true", help="keep the search's temporary folder")
    p.add_argument("--mlflow-only", type=Path, metavar="FOLDER",
                   help="no search: the MLflow shots of the kept folder of an earlier run (its mlflow.db; "
                        "its first search is shown)")
    p.add_argument("--ray-only", metavar="URL",
                   help="no search: the Ray dashboard shots of a search running now (the address it printed)")
    p.add_argument("--optuna-only", type=Path, metavar="DB",
                   help="no search: Optuna Dashboard's shots of an optuna search's study (its optuna.db)")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    if args.optuna_only:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile, _server(
                ["optuna-dashboard", f"sqlite:///{args.optuna_only.resolve()}"], "/", args.optuna_only.parent) as url:
            context = _browser(pw, profile, args.chromium)
            _optuna_shots(context, url, args.out)
            context.close()
        return 0
    if args.ray_only:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            context = _browser(pw, profile, args.chromium)
            _ray_shots(context, args.ray_only, args.out)
            context.close()
        return 0
    if args.mlflow_only:
        store = f"sqlite:///{args.mlflow_only.resolve() / 'mlflow.db'}"
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile, _mlflow_ui(store, args.mlflow_only) as url:
            context = _browser(pw, profile, args.chromium)
            _mlflow_shots(context, url, store, args.out)
            context.close()
        return 0
    work = Path(tempfile.mkdtemp(prefix="polarsearch-shots-"))
    store = f"sqlite:///{work / 'mlflow.db'}"
    search = subprocess.Popen(
        [str(BIN / "polarsearch"), "--preset", "smoke", "--target-flops", "0.5", "--delta", "0.1", "--max-trials", "3",
         "--data-dir", str(args.data_dir.resolve()), "--output", str(work / "search"), "--mlflow-uri", store],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    console: list[str] = []
    threading.Thread(target=_pump, args=(search, lines, console), daemon=True).start()
    try:
        with sync_playwright() as pw:
            profile = work / "chromium-profile"  # a fresh profile: no cookies or cache from earlier runs
            context = _browser(pw, profile, args.chromium)
            dashboard = _wait_for(lines, r"Ray dashboard: (http://\S+)", 600).group(1)
            _wait_for(lines, r"^trial 2 epoch 1", 900)  # a trial that runs, the first one done
            _ray_shots(context, dashboard, args.out)
            if search.wait(timeout=1800) != 0:
                raise RuntimeError(f"the search failed:\n{''.join(console[-20:])}")
            (args.out / "console.txt").write_text(_plain("".join(console)))
            with _mlflow_ui(store, work) as url:
                _mlflow_shots(context, url, store, args.out)
            context.close()
    finally:
        if search.poll() is None:
            search.terminate()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for shot in sorted(args.out.glob("*.png")):
        print(f"{shot}  {shot.stat().st_size // 1024} KB")
    return 0


def _browser(pw, profile: str | Path, chromium: str):
    """Debian's chromium, headless, in its own profile folder (no cookies or cache from earlier runs)."""
    return pw.chromium.launch_persistent_context(str(profile), executable_path=chromium, args=CHROMIUM_ARGS,
                                                 viewport=VIEWPORT)  # fmt: skip


def _ray_shots(context, dashboard: str, out: Path) -> None:
    """Jobs (the job's name) and Actors (a trial per actor, named) pages, signed in with the token."""
    token = os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").read_text().strip()
    context.request.post(f"{dashboard}/api/authenticate", headers={"Authorization": f"Bearer {token}"})
    page = context.new_page()
    for name, route in (("ray-jobs", "#/jobs"), ("ray-actors", "#/actors")):
        page.goto(f"{dashboard}/{route}")
        page.wait_for_timeout(6000)
        _shot(page, out / f"{name}.png")
    _click(page.get_by_text("Log", exact=True).first)  # the running trial's actor log: its epoch lines
    page.wait_for_timeout(4000)
    _click(page.get_by_role("tab", name="STDOUT"))
    page.wait_for_timeout(4000)
    page.mouse.wheel(0, 600)  # from the actor's facts down to its log
    page.wait_for_timeout(1000)
    _shot(page, out / "ray-actor-log.png")
    page.close()


def _mlflow_shots(context, url: str, store: str, out: Path) -> None:
    """The runs table (the search's row expanded), the charts, the search's page (description and
    verdict), its figures, a trial's figures and γ histograms, and MLflow's compare view of the trials."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("polarsearch").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    parent = next(r for r in runs if r.data.tags.get("polarsearch.kind") == "search")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = [r for r in children if r.data.tags.get("polarsearch.kind") == "trial"]
    final = [r for r in children if r.data.tags.get("polarsearch.kind") == "final"]
    ml = "workflowType=machine_learning"
    base = f"{url}/#/experiments/{experiment}"
    run = f"{base}/runs/{parent.info.run_id}"
    trial = f"{base}/runs/{trials[0].info.run_id}"
    compare = (f"{url}/#/compare-runs?runs={json.dumps([r.info.run_id for r in trials])}"
               f"&experiments={json.dumps([experiment])}&{ml}")
    shots = [  # name, address, what to do first: expand the search's row, click a text (then another)
        ("mlflow-runs", f"{base}/runs?{ml}&compareRunsMode=TABLE", {"expand": True}),
        ("mlflow-charts", f"{base}/runs?{ml}&compareRunsMode=CHART", {"expand": True}),
        ("mlflow-search-run", f"{run}?{ml}", {}),
        ("mlflow-search-history", f"{run}/artifacts?{ml}", {"click": "search_history.png"}),
        ("mlflow-search-path", f"{run}/artifacts?{ml}", {"click": "search_path.png"}),
        ("mlflow-trial-flops", f"{trial}/artifacts?{ml}", {"click": "flops_per_epoch.png"}),
        ("mlflow-trial-gammas", f"{trial}/artifacts?{ml}",  # the γ histogram of the trial's last epoch
         {"click": "images", "then": re.compile(rf"gamma_histogram\+step\+{int(trials[0].data.metrics.get('epochs', 1))}\+.*[0-9a-f]\.png$")}),
        ("mlflow-compare", compare, {}),
    ]  # fmt: skip
    if final:
        shots.append(("mlflow-final-channels", f"{base}/runs/{final[0].info.run_id}/artifacts?{ml}",
                      {"click": "kept_channels.png"}))  # fmt: skip
    page = context.new_page()
    for name, address, do in shots:
        page.goto(address)
        page.wait_for_timeout(8000)
        _click(page.get_by_role("button", name="Close"))  # the MLflow Assistant's panel
        if do.get("expand"):
            _click(page.locator(".ag-row", has_text=parent.info.run_name).locator("button").first)  # its trials
            _widen(page, "Run Name", 220)
        if do.get("click"):
            _click(page.get_by_text(do["click"], exact=True).first)
        if do.get("then"):
            page.wait_for_timeout(2000)
            _click(page.get_by_text(do["then"]).first)
        page.wait_for_timeout(3000)
        _shot(page, out / f"{name}.png")
    page.close()


def _widen(page, header: str, pixels: int) -> None:
    """Drag the border right of a runs-table column header (as a person would to read the names)."""
    try:
        cell = page.locator(".ag-header-cell", has_text=header).first.bounding_box(timeout=3000)
        x, y = cell["x"] + cell["width"] - 2, cell["y"] + cell["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + pixels, y, steps=10)
        page.mouse.up()
        page.mouse.move(5, 5)  # no tooltip left over the table
    except Exception:  # noqa: BLE001 - no such header here: the shot as it is
        pass


def _click(locator) -> None:
    try:
        locator.click(timeout=3000)
    except Exception:  # noqa: BLE001 - not on this page (or this MLflow version): the shot as it is
        pass


def _shot(page, path: Path, full: bool = False) -> None:
    """A PNG of the viewport (or the whole page), reduced in colours (Pillow) to stay small."""
    from PIL import Image

    page.screenshot(path=str(path), full_page=full)
    image = Image.open(path).convert("RGB").quantize(colors=128)
    image.save(path, optimize=True)


class _server:
    """A web UI (`command` + host/port flags) on a free loopback port, for as long as the block runs;
    `health` is the path polled until it answers."""

    def __init__(self, command: list[str], health: str, work: Path) -> None:
        self.command, self.health, self.work = command, health, work

    def __enter__(self) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # its own session, so that its server workers stop with it; MLflow: no job runner (nothing to run)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen([str(BIN / self.command[0]), *self.command[1:], "--host", "127.0.0.1",
                                      "--port", str(port)], cwd=self.work, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600  # minutes on a loaded machine
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                urllib.request.urlopen(f"{url}{self.health}", timeout=5)
                return url
            except OSError:
                time.sleep(2)
        self.__exit__()
        raise RuntimeError(f"{self.command[0]} did not answer")

    def __exit__(self, *exc: object) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        self.proc.wait(timeout=60)


def _mlflow_ui(store: str, work: Path) -> _server:
    """`mlflow ui` over `store`."""
    return _server(["mlflow", "ui", "--backend-store-uri", store, "--workers", "1"], "/health", work)


def _optuna_shots(context, url: str, out: Path) -> None:
    """The study's page: its history plot and the intermediate values (|F − F*| per epoch of each trial)."""
    page = context.new_page()
    page.goto(f"{url}/dashboard/studies/1")
    page.wait_for_timeout(8000)
    _shot(page, out / "optuna-study.png", full=True)
    page.close()


def _pump(proc: subprocess.Popen, lines: queue.Queue, console: list[str]) -> None:
    for line in proc.stdout:
        console.append(line)
        lines.put(line)


def _wait_for(lines: queue.Queue, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        found = re.search(pattern, line.strip())
        if found:
            return found
    raise TimeoutError(f"the search printed no line matching {pattern!r} in {timeout:.0f} s")


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


if __name__ == "__main__":
    sys.exit(main())
