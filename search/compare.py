"""`polarsearch compare`: the trials of a search side by side, read back from its MLflow store.

    polarsearch compare                                  # the newest search in sqlite:///mlflow.db
    polarsearch compare --search search-20261130-1640    # a named search (its parent run's name or id)
    polarsearch compare --searches --format markdown     # one row per search: verdict, winner, trials
    polarsearch compare --mlflow-uri sqlite:////abs/mlflow.db --experiment E --format csv|json|table

One row per trial run (number, λ, t, F, |F − F*|, epochs, accuracy, status), the winner marked
with `*`. It only reads MLflow, so it works on a finished, running or interrupted search alike;
`runs_table` gives the same trials as a pandas table, for a notebook.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient

from search.outcome import finite
from search.tracking import DEFAULT_EXPERIMENT, DEFAULT_URI, KIND
from search.views import NUMBER, VERDICT, WINNER, Target

FORMATS = ("table", "csv", "json", "markdown")
TRIAL_COLUMNS = ("winner", "trial", "lam", "t", "flops_reduction", "gap", "epochs", "val_accuracy", "status", "run_id")
SEARCH_COLUMNS = ("search", "started", "status", "verdict", "strategy", "target", "delta", "trials", "trial_epochs",
                  "best_lam", "best_t", "best_flops_reduction", "run_id")  # fmt: skip


class CompareError(ValueError):
    """Nothing to compare (no such experiment, search or store); the message is one line."""


def parser(make: Any) -> argparse.ArgumentParser:
    """The `compare` flags on a parser built by `make(prog=..., description=...)` (the CLI's)."""
    p = make(prog="polarsearch compare", description="The trials of the newest (or a named) search, side by side.")
    p.add_argument("--mlflow-uri", default=DEFAULT_URI, help=f"MLflow tracking URI (default {DEFAULT_URI})")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    p.add_argument("--search", help="the search: its parent run's name (the output folder's name) or run id")
    p.add_argument("--searches", action="store_true", help="one row per search instead of one per trial")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    return p


def command(args: argparse.Namespace) -> int:
    """Print the comparison; a store or search that is not there is a CompareError (one line, exit 2)."""
    rows, columns = (searches(args.mlflow_uri, args.experiment) if args.searches
                     else trials(args.mlflow_uri, args.experiment, args.search))  # fmt: skip
    print(render(rows, columns, args.format))
    return 0


def trials(uri: str, experiment: str, search: str | None = None) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The trial rows of `search` (default: the newest search of `experiment`), in trial order."""
    client, experiment_id = _open(uri, experiment)
    parent = _parent(client, experiment_id, search)
    target = Target.of_run(client, parent.info.run_id)
    query = f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`{KIND}` = 'trial'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=10000)
    rows = []
    for i, run in enumerate(runs, 1):
        flops = finite(run.data.metrics.get("flops_reduction"))
        epochs = run.data.metrics.get("epochs")
        rows.append({
            "winner": "*" if run.data.tags.get(WINNER) == "true" else "", "trial": int(run.data.tags.get(NUMBER, i)),
            "lam": float(run.data.params["lam"]), "t": float(run.data.params["t"]), "flops_reduction": flops,
            "gap": None if flops is None or target is None else abs(flops - target.target),
            "epochs": None if epochs is None else int(epochs), "val_accuracy": finite(run.data.metrics.get("val_accuracy")),
            "status": run.data.tags.get("status", ""), "run_id": run.info.run_id,
        })  # fmt: skip
    return sorted(rows, key=lambda row: row["trial"]), TRIAL_COLUMNS


def searches(uri: str, experiment: str) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """One row per search of `experiment`, newest first: its verdict, winner, number of trials and
    trial-epochs (what the search cost: the epochs its trials trained, summed)."""
    client, experiment_id = _open(uri, experiment)
    parents = client.search_runs([experiment_id], f"tags.`{KIND}` = 'search'", order_by=["attributes.start_time DESC"],
                                 max_results=1000)  # fmt: skip
    rows = []
    for run in parents:
        count = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}' and tags.`{KIND}` = 'trial'",
                                   max_results=10000)  # fmt: skip
        params, metrics = run.data.params, run.data.metrics
        rows.append({
            "search": run.info.run_name, "started": _time(run.info.start_time), "status": run.data.tags.get("status", ""),
            "verdict": run.data.tags.get(VERDICT, ""), "target": _float(params.get("target")),
            "strategy": params.get("strategy", ""), "delta": _float(params.get("delta")), "trials": len(count),
            "trial_epochs": int(sum(r.data.metrics.get("epochs", 0) for r in count)), "best_lam": metrics.get("best_lam"),
            "best_t": metrics.get("best_t"), "best_flops_reduction": metrics.get("best_flops_reduction"),
            "run_id": run.info.run_id,
        })  # fmt: skip
    return rows, SEARCH_COLUMNS


def render(rows: list[dict[str, Any]], columns: tuple[str, ...], fmt: str) -> str:
    """The rows as an aligned table, CSV, JSON (a list of objects) or a Markdown table."""
    if fmt == "json":
        return json.dumps([{c: row[c] for c in columns} for row in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: "" if row[c] is None else row[c] for c in columns} for row in rows)
        return out.getvalue().rstrip("\n")
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in cells])
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def _open(uri: str, experiment: str) -> tuple[Any, str]:
    from mlflow import MlflowClient

    from search.tracking import TrackingError, check_uri

    try:
        check_uri(uri)
    except TrackingError as error:
        raise CompareError(str(error)) from None
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise CompareError(f"no MLflow store at {uri} (pass --mlflow-uri, e.g. sqlite:////abs/path/mlflow.db)")
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise CompareError(f"no experiment {experiment!r} in {uri}")
    return client, found.experiment_id


def _parent(client: Any, experiment_id: str, search: str | None) -> Any:
    query = f"tags.`{KIND}` = 'search'"
    parents = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1000)
    if search is not None:
        parents = [r for r in parents if search in (r.info.run_name, r.info.run_id)]
    if not parents:
        raise CompareError(f"no search {search!r} in this experiment" if search else "no search in this experiment")
    return parents[0]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if not math.isnan(value) else "-"
    return str(value)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _time(ms: int | None) -> str:
    import time

    return "" if ms is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def runs_table(uri: str, experiment: str = DEFAULT_EXPERIMENT, parent_run_id: str | None = None) -> pd.DataFrame:
    """The trials of a search as a pandas table (the newest search of `experiment` by default), one row
    per trial run: lam, t, flops_reduction, val_accuracy, epochs, status, run_id, in the order they started."""
    columns = ["lam", "t", "flops_reduction", "val_accuracy", "epochs", "status", "run_id"]
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame(columns=columns)
    ids = [found.experiment_id]
    if parent_run_id is None:
        parents = client.search_runs(ids, f"tags.`{KIND}` = 'search'", order_by=["attributes.start_time DESC"],
                                     max_results=1)  # fmt: skip
        if not parents:
            return pd.DataFrame(columns=columns)
        parent_run_id = parents[0].info.run_id
    query = f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{KIND}` = 'trial'"
    runs = client.search_runs(ids, query, order_by=["attributes.start_time ASC"], max_results=10000)
    rows = [{"lam": float(r.data.params["lam"]), "t": float(r.data.params["t"]),
             "flops_reduction": r.data.metrics.get("flops_reduction"), "val_accuracy": r.data.metrics.get("val_accuracy"),
             "epochs": r.data.metrics.get("epochs"), "status": r.data.tags.get("status"), "run_id": r.info.run_id}
            for r in runs]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
