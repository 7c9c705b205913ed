"""MLflow records of a search, against a real SQLite store in a temp folder."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from search.compare import runs_table
from search.strategies import Trial
from search.tracking import SearchTracker, TrackingError, absolute_uri, check_uri, ui_hint
from trainers.config import FIELDS, load_config
from trainers.final import FinalResult


def epoch(lam, t, e, f, acc=0.5, loss=2.0, threshold=0.1):
    return {"lam": lam, "t": t, "epoch": e, "flops_reduction": f, "threshold": threshold, "val_accuracy": acc,
            "loss": loss, "status": "running"}  # fmt: skip


def end(lam, t, e, f, status="stable", acc=0.5):
    return {"lam": lam, "t": t, "epoch": e, "flops_reduction": f, "val_accuracy": acc, "status": status,
            "message": "" if status != "failed" else "loss is NaN"}  # fmt: skip


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A SQLite store in tmp_path/db/, used from another working directory (nothing may land there)."""
    (tmp_path / "db").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"


def test_parent_nested_trials_and_per_epoch_history(store, tmp_path):
    config = load_config("smoke", {"data_dir": "/data"})
    tracker = SearchTracker(store, "exp")
    parent = tracker.start_search({**config.to_dict(), "target": 0.5, "delta": 0.05, "strategy": "algorithm1",
                                   "preset": "smoke"}, run_name="s1")  # fmt: skip
    for e, f in enumerate([0.1, 0.3, 0.31], 1):
        tracker.log_epoch("trial-a", epoch(0.02, 1.2, e, f))
    tracker.end_trial("trial-a", end(0.02, 1.2, 3, 0.31))
    for e, f in enumerate([0.5, 0.7], 1):
        tracker.log_epoch("trial-b", epoch(0.03, 1.2, e, f))
    tracker.end_trial("trial-b", end(0.03, 1.2, 2, math.nan, status="failed"))
    tracker.end_search("stopped", "max_trials reached", Trial(0, 0.02, 1.2, 0.31, "ok"))

    client = MlflowClient(store)
    run = client.get_run(parent)
    assert run.info.status == "FAILED" and run.info.run_name == "s1"  # F=0.31 misses 0.5 ± 0.05: red, not "Finished"
    assert run.data.tags["polarsearch.verdict"] == "missed"
    assert set(FIELDS) | {"target", "delta", "strategy", "preset"} <= set(run.data.params)
    assert run.data.params["target"] == "0.5" and run.data.params["model"] == "resnet20"
    assert run.data.tags["status"] == "stopped" and run.data.tags["stop_reason"] == "max_trials reached"
    assert run.data.metrics["best_flops_reduction"] == pytest.approx(0.31)

    exp = client.get_experiment_by_name("exp")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'",
                                  order_by=["attributes.start_time ASC"])
    assert len(children) == 2
    a, b = children
    assert (a.data.params["lam"], a.data.params["t"]) == ("0.02", "1.2")
    history = client.get_metric_history(a.info.run_id, "flops_reduction")
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.3), (3, 0.31)]  # the final F is the last
    assert [m.step for m in client.get_metric_history(a.info.run_id, "val_accuracy")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(a.info.run_id, "loss")] == [1, 2, 3]
    assert a.data.tags["status"] == "stable" and a.info.status == "FINISHED"
    assert a.data.metrics["flops_reduction"] == pytest.approx(0.31) and a.data.metrics["epochs"] == 3
    assert b.info.status == "FAILED" and b.data.tags["status"] == "failed"
    assert math.isnan(b.data.metrics["flops_reduction"])  # a failed trial's final F: NaN after 0.5, 0.7
    assert [m.value for m in client.get_metric_history(b.info.run_id, "flops_reduction")][:2] == [0.5, 0.7]

    table = runs_table(store, "exp")
    assert list(table["lam"]) == [0.02, 0.03] and list(table["status"]) == ["stable", "failed"]
    assert table["flops_reduction"].iloc[0] == pytest.approx(0.31) and list(table["epochs"]) == [3, 2]
    assert list(Path.cwd().iterdir()) == []  # the store and its artifacts stay in db/


def test_resume_continues_the_same_runs(store):
    first = SearchTracker(store, "exp")
    parent = first.start_search({"target": 0.5}, run_name="s")
    first.log_epoch("trial-a", epoch(0.02, 1.2, 1, 0.1))
    again = SearchTracker(store, "exp")  # a new driver after a kill
    again.resume_search(parent)
    again.log_epoch("trial-a", epoch(0.02, 1.2, 2, 0.2))
    again.end_trial("trial-a", end(0.02, 1.2, 2, 0.2))
    table = runs_table(store, "exp", parent)
    assert len(table) == 1
    history = MlflowClient(store).get_metric_history(table["run_id"].iloc[0], "flops_reduction")
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.2)]


def test_final_run_logs_numbers_and_a_model_that_loads_without_our_code(store, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 10)).eval()  # fmt: skip
    example = torch.randn(2, 3, 8, 8)
    final = FinalResult(
        acc_before_pruning=0.8, acc_after_pruning=0.3, acc_after_finetune=0.75, flops_before=1000, flops_after=400,
        flops_reduction=0.6, params_before=500, params_after=200, latency_ms_before={1: 2.0, 500: 9.0},
        latency_ms_after={1: 1.0, 500: 4.0}, threshold=0.2, model_path=tmp_path / "pruned_model.pt2",
        pruned_model=model, example_input=example,
    )  # fmt: skip
    tracker = SearchTracker(store, "exp")
    parent = tracker.start_search({"target": 0.5})
    run_id = tracker.log_final(final, 0.02, 1.2)

    run = MlflowClient(store).get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED"
    assert run.data.params == {"lam": "0.02", "t": "1.2"}
    assert run.info.run_name == "final λ=0.02 t=1.2 F=0.600 acc 0.750"  # read in the table like a trial
    assert run.data.metrics["acc_after_finetune"] == 0.75 and run.data.metrics["flops_after"] == 400
    assert run.data.metrics["latency_ms_after_b500"] == 4.0 and run.data.metrics["latency_ms_before_b1"] == 2.0

    mlflow.set_tracking_uri(store)
    try:
        models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
        assert [(m.name, m.source_run_id) for m in models] == [("pruned_model", run_id)]
        loaded = mlflow.pytorch.load_model(models[0].model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    assert isinstance(loaded, torch.fx.GraphModule)  # the pt2 export: no class of ours needed
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))
    assert (tmp_path / "db" / "mlruns").is_dir()


def test_check_uri(tmp_path, listener):
    check_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    check_uri("sqlite:///mlflow.db")  # relative: the working directory
    with pytest.raises(TrackingError, match="does not exist"):
        check_uri(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    with pytest.raises(TrackingError, match="does not exist"):
        check_uri(str(tmp_path / "missing" / "mlruns"))
    port, close = listener
    check_uri(f"http://127.0.0.1:{port}")
    close()
    with pytest.raises(TrackingError, match="cannot reach"):
        check_uri(f"http://127.0.0.1:{port}", timeout=1)
    with pytest.raises(TrackingError, match="invalid port"):
        check_uri("http://127.0.0.1:99999")
    assert not list(tmp_path.iterdir())  # checking writes nothing


def test_absolute_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert absolute_uri(f"sqlite:///{tmp_path}/a.db") == f"sqlite:///{tmp_path}/a.db"
    assert absolute_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_ui_hint():
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in ui_hint("sqlite:///mlflow.db")
    assert "http://127.0.0.1:5000" in ui_hint("sqlite:///mlflow.db")
    assert ui_hint("http://mlflow:5000") == "MLflow UI: http://mlflow:5000"


def test_a_trial_decided_early_is_recorded_as_such(store):
    tracker = SearchTracker(store, "exp")
    tracker.start_search({"target": 0.3})
    for e, f in enumerate([0.2, 0.45, 0.52], 1):
        tracker.log_epoch("trial-a", epoch(1e-3, 1.2, e, f))
    tracker.end_trial("trial-a", {**end(1e-3, 1.2, 3, 0.52, status="decided"), "decided": "above",
                                  "forecast": 0.61, "message": "decided above [0.200, 0.400] at epoch 3"})
    (run,) = MlflowClient(store).search_runs([tracker.experiment_id], "tags.`polarsearch.kind` = 'trial'")
    assert run.data.tags["status"] == "decided" and run.data.tags["decided"] == "above"
    assert run.data.metrics["forecast_flops_reduction"] == pytest.approx(0.61)
    assert run.data.metrics["flops_reduction"] == pytest.approx(0.52) and run.data.metrics["epochs"] == 3
    assert run.info.status == "FINISHED"
