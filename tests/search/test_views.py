"""What a person sees of a search in MLflow and on the console, against a real SQLite store in tmp:
run names, the verdict (tag, description, status), the history metrics, the figures' artifacts."""

from __future__ import annotations

import dataclasses
import io

import optuna
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from pruning.threshold import histogram
from search import views
from search.report import Progress, epoch_line
from search.strategies import Trial
from search.strategies.optuna_search import report_epoch
from search.tracking import KIND, SearchTracker, absolute_uri, ui_hint

TARGET, DELTA = 0.5, 0.1
PARAMS = {"target": TARGET, "delta": DELTA, "max_epochs": 4, "gamma_upper": 1.0, "model": "resnet20"}


def epoch(trial, lam, t, e, f, acc=0.3):
    gammas = torch.cat([torch.zeros(40), torch.rand(60) * 0.4 + 0.5])  # a polarized γ: a spike at 0, a mode at 0.7
    return {"trial": trial, "lam": lam, "t": t, "epoch": e, "flops_reduction": f, "threshold": 0.2,
            "val_accuracy": acc, "loss": 2.0, "status": "running", "seconds": 3.0,
            "gamma_histogram": histogram(gammas, 0.01, 1.0).tolist()}  # fmt: skip


def end(trial, lam, t, e, f, status="stable"):
    return {"trial": trial, "lam": lam, "t": t, "epoch": e, "flops_reduction": f, "val_accuracy": 0.3,
            "status": status, "message": ""}  # fmt: skip


def search(store, trials, best_index):
    """A search of `trials` [(lam, t, [F per epoch], status)] logged as the driver logs one."""
    tracker = SearchTracker(store, "views")
    parent = tracker.start_search(PARAMS, run_name="search-1")
    for number, (lam, t, history, status) in enumerate(trials, 1):
        for e, f in enumerate(history, 1):
            tracker.log_epoch(f"t{number}", epoch(number, lam, t, e, f))
        tracker.end_trial(f"t{number}", end(number, lam, t, len(history), history[-1], status))
    lam, t, history, _ = trials[best_index]
    best = Trial(id=best_index, lam=lam, t=t, flops_reduction=history[-1], status="ok")
    tracker.end_search("stopped", "max_trials reached", best)
    return MlflowClient(store), parent


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


MISSED = [(2e-2, 1.2, [0.05, 0.66, 0.66], "stable"), (5e-4, 0.9, [0.02, 0.31, 0.34], "decided")]


def test_trial_runs_read_at_a_glance(store):
    client, parent = search(store, MISSED, 0)
    runs = client.search_runs([client.get_experiment_by_name("views").experiment_id],
                              f"tags.`{KIND}` = 'trial'", order_by=["attributes.start_time ASC"])  # fmt: skip
    assert [r.info.run_name for r in runs] == ["#1 λ=0.02 t=1.2 F=0.660", "#2 λ=5e-4 t=0.9 F=0.340 (decided)"]
    first = runs[0]
    assert first.data.tags[views.NUMBER] == "1" and first.data.tags[views.WINNER] == "true"
    assert views.WINNER not in runs[1].data.tags
    assert first.data.metrics["target_flops"] == TARGET
    assert first.data.metrics["flops_gap_final"] == pytest.approx(0.16)
    gaps = sorted(client.get_metric_history(first.info.run_id, "flops_gap"), key=lambda m: m.step)
    assert [(m.step, round(m.value, 3)) for m in gaps] == [(1, 0.45), (2, 0.16), (3, 0.16)]
    files = _artifacts(client, first.info.run_id)
    assert "flops_per_epoch.png" in files
    assert sum("gamma_histogram" in f and f.endswith(".png") for f in files) >= 3  # an image per epoch


def test_missed_search_is_marked_red_with_its_verdict_and_history(store):
    client, parent = search(store, MISSED, 0)
    run = client.get_run(parent)
    assert run.info.status == "FAILED"  # not a green "Finished"
    assert run.data.tags[views.VERDICT] == "missed"
    note = run.data.tags[views.NOTE]
    assert note.startswith("**Missed the target**") and "|F − F\\*| = 0.160" in note and "#1" in note
    history = {key: sorted((m.step, round(m.value, 4)) for m in client.get_metric_history(parent, key))
               for key in views.HISTORY}  # fmt: skip
    assert history == {"search/F": [(1, 0.66), (2, 0.34)], "search/lam": [(1, 0.02), (2, 0.0005)],
                       "search/t": [(1, 1.2), (2, 0.9)], "search/gap": [(1, 0.16), (2, 0.16)]}  # fmt: skip
    assert {"search_history.png", "search_path.png"} <= set(_artifacts(client, parent))
    experiment = client.get_experiment_by_name("views")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on training runs


def test_hit_search_finishes_green(store):
    client, parent = search(store, [(2e-2, 1.2, [0.4, 0.55], "stable"), (1e-2, 1.2, [0.3, 0.3], "stable")], 0)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags[views.VERDICT] == "hit"
    assert run.data.tags[views.NOTE].startswith("**Hit**")


def test_ui_hint_opens_the_runs_view_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hint = ui_hint(absolute_uri("sqlite:///mlflow.db"), "7")
    assert f"--backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in hint
    assert hint.endswith("http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning")
    assert ui_hint("http://mlflow:5000/", "7") == "MLflow UI: http://mlflow:5000/#/experiments/7/runs?workflowType=machine_learning"


def test_epoch_line_and_in_place_progress():
    target = views.Target(TARGET, DELTA, 30)
    line = epoch_line({"trial": 2, "epoch": 5, "flops_reduction": 0.4, "val_accuracy": 0.43, "seconds": 6.0},
                      target, 30)  # fmt: skip
    assert line == "trial 2 epoch 5/30 F=0.400 (F*=0.5±0.1, |F−F*|=0.100) acc 0.430, 6 s/epoch, ≤2 min left"
    plain = io.StringIO()
    progress = Progress(plain)
    progress.update("a")
    progress.update("b")
    progress.done("end")
    assert plain.getvalue() == "a\nb\nend\n"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    progress = Progress(tty)
    progress.update("a")
    progress.update("b")
    progress.done("end")
    assert tty.getvalue() == "\r\033[Ka\r\033[Kb\r\033[Kend\n"


def test_optuna_study_gets_intermediate_values(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    trial.set_user_attr("proposal", 4)
    driver = optuna.load_study(study_name="s", storage=storage)  # the driver's own handle
    for step, gap in ((1, 0.4), (2, 0.2)):
        report_epoch(driver, 4, step, gap)
    report_epoch(driver, 5, 1, 0.1)  # no running trial of that proposal: ignored
    study.tell(trial, 0.2)
    assert study.trials[0].intermediate_values == {1: 0.4, 2: 0.2}


def test_kept_channels_per_layer_against_the_original():
    from trainers import models

    pruned = models.build("resnet20", 10)
    name, bn = next((n, m) for n, m in pruned.named_modules() if isinstance(m, nn.BatchNorm2d))
    parent_name, _, attr = name.rpartition(".")
    setattr(pruned.get_submodule(parent_name) if parent_name else pruned, attr, nn.BatchNorm2d(bn.num_features // 2))
    layers = views.kept_channels(pruned, "resnet20")
    assert layers[0] == (name, bn.num_features, bn.num_features // 2)
    assert all(before == after for _, before, after in layers[1:])


def _artifacts(client, run_id, path=None):
    """Every file under a run's artifacts, recursively."""
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return out


@pytest.mark.parametrize(("flops", "flag", "code"), [(0.66, True, 3), (0.55, True, 0), (0.66, False, 0)])
def test_fail_on_miss_exit_status(monkeypatch, tmp_path, capsys, flops, flag, code):
    """--fail-on-miss: exit 3 when the winner is outside F* ± δ; without it, 0 as before."""
    import search.inputs
    import search.service
    from search.cli import main
    from search.outcome import SearchOutcome, SearchSpec
    from search.settings import SearchSettings
    from trainers.config import load_config

    spec = SearchSpec(load_config("smoke", {"data_dir": str(tmp_path)}), SearchSettings(target=TARGET, delta=DELTA),
                      output=tmp_path / "out")  # fmt: skip
    best = Trial(id=0, lam=1e-2, t=1.2, flops_reduction=flops, status="ok")
    outcome = SearchOutcome(trials=[], best=best, converged=False, reason="max_trials reached", output=spec.output)
    monkeypatch.setattr(search.inputs, "search_spec", lambda args: spec)
    monkeypatch.setattr(search.service, "run_search", lambda *a, **k: outcome)
    assert main(["--target-flops", "0.5", *(["--fail-on-miss"] if flag else [])]) == code
    assert ("was missed" in capsys.readouterr().err) == (code == 3)


def test_short_lambda():
    assert [views.short_float(v) for v in (5e-4, 2.5e-3, 0.02, 1e-5, 0.0)] == ["5e-4", "2.5e-3", "0.02", "1e-5", "0"]


def test_no_result_says_why(store):
    tracker = SearchTracker(store, "views")
    parent = tracker.start_search(PARAMS, run_name="search-none")
    for number, status in ((1, "decided"), (2, "failed")):
        tracker.log_epoch(f"n{number}", epoch(number, 1e-2, 1.2, 1, 0.3))
        tracker.end_trial(f"n{number}", end(number, 1e-2, 1.2, 1, 0.3 if status == "decided" else float("nan"), status))
    tracker.end_search("stopped", "max_trials reached", None)
    run = MlflowClient(store).get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags[views.VERDICT] == "no_result"
    assert "no trial ended with a stable F (1 decided, 1 failed)" in run.data.tags[views.NOTE]


def test_final_lines_state_the_measured_speed_up_beside_the_flops_promise(tmp_path):
    from search.report import final_lines
    from trainers.final import FinalResult

    final = FinalResult(
        acc_before_pruning=0.8, acc_after_pruning=0.3, acc_after_finetune=0.75, flops_before=1000, flops_after=400,
        flops_reduction=0.6, params_before=500, params_after=200, latency_ms_before={1: 2.0, 500: 9.0},
        latency_ms_after={1: 1.6, 500: 4.0}, threshold=0.2, model_path=tmp_path / "m.pt2", pruned_model=None,
        example_input=None,
    )  # fmt: skip
    text = "\n".join(final_lines(final))
    # 2.0 / 1.6 = 1.25 and 9.0 / 4.0 = 2.25, against 1 / (1 - 0.6) = 2.5
    assert "measured speed-up 1.25x at batch 1 (2 -> 1.6 ms), 2.25x at batch 500 (9 -> 4 ms)" in text
    assert "FLOPs promise 2.50x" in text and "slower" not in text

    # a pruned model slower than the dense one at one batch size (F 0.1 on CPU): a warning names it
    slow = dataclasses.replace(final, latency_ms_after={1: 2.5, 500: 8.0}, flops_reduction=0.1)
    text = "\n".join(final_lines(slow))
    assert "warning: the pruned model is slower than the dense one here (0.80x at batch 1)" in text
    assert "at F=0.10" in text
