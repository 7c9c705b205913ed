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
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
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
            context = pw.chromium.launch_persistent_context(str(profile), executable_path=args.chromium,
                                                            args=CHROMIUM_ARGS, viewport=VIEWPORT)  # fmt: skip
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
        print(f"{shot.relative_to(ROOT)}  {shot.stat().st_size // 1024} KB")
    return 0


def _ray_shots(context, dashboard: str, out: Path) -> None:
    """Jobs (the job's name) and Actors (a trial per actor, named) pages, signed in with the token."""
    token = os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").read_text().strip()
    context.request.post(f"{dashboard}/api/authenticate", headers={"Authorization": f"Bearer {token}"})
    page = context.new_page()
    for name, route in (("ray-jobs", "#/jobs"), ("ray-actors", "#/actors")):
        page.goto(f"{dashboard}/{route}")
        page.wait_for_timeout(6000)
        _shot(page, out / f"{name}.png")
    page.close()


def _mlflow_shots(context, url: str, store: str, out: Path) -> None:
    """The runs table, the charts, the search's page, a trial's artifacts and the compare view."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("polarsearch").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time ASC"])
    parent = next(r for r in runs if r.data.tags.get("polarsearch.kind") == "search")
    trials = [r for r in runs if r.data.tags.get("polarsearch.kind") == "trial"]
    base = f"{url}/#/experiments/{experiment}"
    page = context.new_page()
    shots = [
        ("mlflow-runs", f"{base}/runs?workflowType=machine_learning&compareRunsMode=TABLE", "text=#1"),
        ("mlflow-charts", f"{base}/runs?workflowType=machine_learning&compareRunsMode=CHART", "text=search/F"),
        ("mlflow-search-run", f"{base}/runs/{parent.info.run_id}", "text=Missed"),
        ("mlflow-search-artifacts", f"{base}/runs/{parent.info.run_id}/artifacts/search_history.png", None),
        ("mlflow-trial-artifacts", f"{base}/runs/{trials[0].info.run_id}/artifacts/flops_per_epoch.png", None),
        ("mlflow-trial-images", f"{base}/runs/{trials[0].info.run_id}/model-metrics", None),
        ("mlflow-compare", f"{url}/#/compare-runs?runs={json.dumps([r.info.run_id for r in trials])}"
                           f"&experiments={json.dumps([experiment])}", None),
    ]  # fmt: skip
    for name, address, wait_text in shots:
        page.goto(address)
        try:
            if wait_text:
                page.wait_for_selector(wait_text, timeout=15000)
        except Exception:  # noqa: BLE001 - the shot is still worth taking; look at it
            print(f"{name}: {wait_text!r} not seen", file=sys.stderr)
        page.wait_for_timeout(5000)
        _shot(page, out / f"{name}.png")
    page.close()


def _shot(page, path: Path) -> None:
    """A PNG of the viewport, reduced in colours (Pillow) to stay small in the repository."""
    from PIL import Image

    page.screenshot(path=str(path))
    image = Image.open(path).convert("RGB").quantize(colors=128)
    image.save(path, optimize=True)


class _mlflow_ui:
    """`mlflow ui` on a free loopback port over `store`, for as long as the block runs."""

    def __init__(self, store: str, work: Path) -> None:
        self.store, self.work = store, work

    def __enter__(self) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", self.store, "--host", "127.0.0.1",
                                      "--port", str(port)], cwd=self.work, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                return url
            except OSError:
                time.sleep(1)
        raise RuntimeError("mlflow ui did not answer")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


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
