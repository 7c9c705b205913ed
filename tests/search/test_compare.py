"""`polarsearch compare` against a real MLflow SQLite store written by the search's tracker: the
trials of the newest (or a named) search, the winner marked, in every format, parsed back."""

from __future__ import annotations

import csv
import io
import json

import pytest

from search.cli import main
from search.strategies import Trial
from search.tracking import SearchTracker

PARAMS = {"target": 0.5, "delta": 0.05, "max_epochs": 3, "strategy": "secant"}


def _search(store, name, trials, best):
    """Log a search of `trials` [(lam, t, F, status)] as the driver does; `best` is the winner's index."""
    tracker = SearchTracker(store, "cmp")
    tracker.start_search(PARAMS, run_name=name)
    for number, (lam, t, f, status) in enumerate(trials, 1):
        result = {"trial": number, "lam": lam, "t": t, "epoch": 1, "flops_reduction": f, "threshold": 0.1,
                  "val_accuracy": 0.4, "loss": 1.0, "status": "running"}  # fmt: skip
        tracker.log_epoch(f"{name}-{number}", result)
        tracker.end_trial(f"{name}-{number}", {**result, "epoch": number + 1, "status": status, "message": ""})
    lam, t, f, _ = trials[best]
    tracker.end_search("converged", "inside the band", Trial(best, lam, t, f, "ok"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('cmp') / 'mlflow.db'}"
    _search(uri, "search-old", [(1e-2, 1.2, 0.7, "stable")], 0)
    _search(uri, "search-new", [(1e-2, 1.2, 0.62, "stable"), (5e-3, 1.2, 0.48, "stable"),
                                (2.5e-3, 1.1, 0.3, "decided")], 1)  # fmt: skip
    return uri


def _run(capsys, *argv):
    code = main(["compare", "--mlflow-uri", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_lists_the_newest_search_with_its_winner(store, capsys):
    code, out, _ = _run(capsys, store, "--experiment", "cmp", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["trial"], r["lam"], r["t"], r["status"]) for r in rows] == [
        (1, 1e-2, 1.2, "stable"), (2, 5e-3, 1.2, "stable"), (3, 2.5e-3, 1.1, "decided")]
    assert [r["winner"] for r in rows] == ["", "*", ""]
    assert [round(r["gap"], 3) for r in rows] == [0.12, 0.02, 0.2]
    assert rows[1]["flops_reduction"] == pytest.approx(0.48) and [r["epochs"] for r in rows] == [2, 3, 4]


def test_csv_markdown_and_table_carry_the_same_rows(store, capsys):
    _, out, _ = _run(capsys, store, "--experiment", "cmp", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["trial"] for r in rows] == ["1", "2", "3"] and rows[1]["winner"] == "*"
    _, out, _ = _run(capsys, store, "--experiment", "cmp", "--format", "markdown")
    lines = out.strip().splitlines()
    assert lines[0].startswith("| winner | trial | lam") and lines[1].startswith("|---") and len(lines) == 5
    assert lines[3].split("|")[1].strip() == "*"
    _, out, _ = _run(capsys, store, "--experiment", "cmp")
    table = out.strip().splitlines()
    assert table[0].split()[:3] == ["winner", "trial", "lam"] and len(table) == 4
    assert table[2].split()[:2] == ["*", "2"]


def test_a_named_search_and_one_row_per_search(store, capsys):
    _, out, _ = _run(capsys, store, "--experiment", "cmp", "--search", "search-old", "--format", "json")
    assert [(r["trial"], r["winner"]) for r in json.loads(out)] == [(1, "*")]
    _, out, _ = _run(capsys, store, "--experiment", "cmp", "--searches", "--format", "json")
    searches = json.loads(out)
    assert [(s["search"], s["trials"], s["verdict"]) for s in searches] == [("search-new", 3, "hit"),
                                                                            ("search-old", 1, "missed")]  # fmt: skip
    assert searches[0]["best_flops_reduction"] == pytest.approx(0.48) and searches[0]["target"] == 0.5
    # what each search cost: its trials' epochs summed (2 + 3 + 4 and 2), under its strategy
    assert [(s["trial_epochs"], s["strategy"]) for s in searches] == [(9, "secant"), (2, "secant")]


def test_missing_store_or_experiment_is_one_line(store, tmp_path, capsys):
    code, _, err = _run(capsys, f"sqlite:///{tmp_path / 'none.db'}")
    assert code == 2 and err.count("\n") == 1 and "no MLflow store" in err
    code, _, err = _run(capsys, store, "--experiment", "nope")
    assert code == 2 and "no experiment 'nope'" in err
    code, _, err = _run(capsys, store, "--experiment", "cmp", "--search", "nope")
    assert code == 2 and "no search 'nope'" in err
