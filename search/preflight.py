"""The checks that the real use of an input makes, made before anything starts: the MLflow store
asked a real question, the output folder's writability, the device's presence.

Each raises `PreflightError` with one line; `search.inputs` turns it into the user's error. Nothing
here writes anything (a missing SQLite store is created by MLflow later, not here).
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

# Schemes MLflow's tracking client accepts (a "+driver" suffix allowed for the SQL ones).
_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


class PreflightError(ValueError):
    """An input that would fail once used; the message is one line."""


def check_mlflow(uri: str, experiment: str = "Default", timeout: float = 10.0) -> None:
    """The MLflow store at `uri` works: a known scheme, a SQLite file that is an MLflow database, or
    an HTTP server that answers MLflow's REST API (not a web page); `experiment`, if it is there, is
    not deleted (MLflow refuses new runs in a deleted experiment). The deadline is generous: a server
    just started answers its first request in seconds on a loaded machine (seen: > 3 s)."""
    from search.tracking import TrackingError, check_uri

    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in _SCHEMES:
        raise PreflightError(f"MLflow tracking URI {uri!r}: unsupported scheme {scheme!r} "
                             f"(use sqlite:///PATH, a folder, http(s)://HOST:PORT or a database URI)")  # fmt: skip
    try:
        check_uri(uri, timeout=timeout)
    except TrackingError as error:
        raise PreflightError(str(error)) from None
    if scheme == "sqlite":
        _check_sqlite(uri, experiment)
    elif scheme in ("http", "https"):
        _check_server(uri, experiment, timeout)


def _check_sqlite(uri: str, experiment: str) -> None:
    """An existing database file must open read-only, pass SQLite's check, and be MLflow's (or empty)."""
    from search.tracking import _sqlite_path

    path = _sqlite_path(uri)
    if path is None:
        return
    if path.exists() and not path.is_file():
        raise PreflightError(f"MLflow store {uri}: {path} is not a file")
    folder = path.parent if str(path.parent) else Path(".")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PreflightError(f"MLflow store {uri}: {path if path.exists() else folder} is not writable")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=5) as db:
            problems = db.execute("PRAGMA quick_check").fetchone()[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            stages = [row[0] for row in db.execute("SELECT lifecycle_stage FROM experiments WHERE name = ?",
                                                   (experiment,))] if "experiments" in tables else []  # fmt: skip
        db.close()
    except sqlite3.Error as error:
        raise PreflightError(f"MLflow store {uri}: {path} is not a usable SQLite database ({error})") from None
    if problems != "ok":
        raise PreflightError(f"MLflow store {uri}: {path} is damaged ({' '.join(problems.split())[:120]})")
    if tables and not {"experiments", "runs"} <= tables:
        raise PreflightError(f"MLflow store {uri}: {path} is a SQLite database but not an MLflow store")
    _check_stage(uri, experiment, stages[0] if stages else None)


def _check_stage(uri: str, experiment: str, stage: str | None) -> None:
    if stage == "deleted":
        raise PreflightError(f"MLflow experiment {experiment!r} in {uri} is deleted: restore it "
                             f"(mlflow experiments restore) or choose another --experiment")  # fmt: skip


def _check_server(uri: str, experiment: str, timeout: float) -> None:
    """One REST call MLflow's client makes (experiment by name); the answer must be MLflow's JSON."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the user's tracking URI
            status, body = response.status, response.read(65536)
    except urllib.error.HTTPError as error:  # MLflow answers a missing experiment with 404 and a JSON error
        status, body = error.code, error.read(65536)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise PreflightError(f"cannot reach the MLflow tracking server {uri}: {reason}") from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ({"experiment", "error_code"} & set(answer)):
        raise PreflightError(f"{uri} is not an MLflow tracking server (HTTP {status} to {url} "
                             f"is not MLflow's JSON)")  # fmt: skip
    _check_stage(uri, experiment, (answer.get("experiment") or {}).get("lifecycle_stage"))


def check_output(output: Path, what: str = "--output") -> None:
    """`output` is a folder (or can be made one) that this process may write in."""
    if output.exists() and not output.is_dir():
        raise PreflightError(f"{what} {output} exists and is not a folder")
    existing = next(p for p in (output, *output.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise PreflightError(f"{what} {output}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PreflightError(f"{what} {output}: {existing} is not writable")


def check_device(device: str) -> None:
    """A device the config names exists on this machine (auto and cpu always do)."""
    import torch

    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            have = f"{count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA GPU"
            raise PreflightError(f"--device {device}: this machine has {have} (use --device auto or cpu)")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise PreflightError("--device mps: MPS is not available on this machine (use --device auto or cpu)")
