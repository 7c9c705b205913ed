"""The Ray Tune adapter driven directly (suggest / on_trial_complete by hand, as Tune would), and
one real local Ray running the same searcher through a Tuner with an oracle trainable."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import pytest
import ray
from ray.tune.search import Searcher

from search import strategies
from search.ray_cluster import (
    RayAddressError,
    RayInfo,
    ResourceError,
    check_ray_address,
    ray_session,
    trial_resources,
)
from search.settings import SearchSettings
from search.strategies import WAIT
from search.trainable import final_metrics
from search.tune import AskTellSearcher, TrialEvents, run_tuner
from trainers.trial import TrialResult

TARGET, DELTA = 0.5, 0.02
_TRIAL_NUMBERS = itertools.count()


def monotone(lam: float, t: float) -> float:
    """F grows with λ and with t (Theorem 3.2), saturating at 0 and 1."""
    return min(1.0, max(0.0, 0.9 * lam / 2e-4 + 0.25 * (t - 1.2)))


def staircase(lam: float, t: float) -> float:
    """F jumps across the window as λ moves: the λ phase cannot land, t must do it."""
    return min(1.0, max(0.0, (0.3 if lam < 1.1e-4 else 0.6) + 0.25 * (t - 1.2)))


def strategy(name: str):
    parallel = 3 if name == "kary" else 1
    return strategies.build(SearchSettings(target=TARGET, delta=DELTA, strategy=name, max_trials=15, parallel=parallel))


def by_hand(strat, oracle) -> list[tuple[float, float]]:
    """The strategy's own loop: take every proposal it gives until WAIT, then tell them oldest first."""
    asked, outstanding = [], []
    while True:
        p = strat.ask()
        if p is None:
            return asked
        if p is WAIT:
            proposal = outstanding.pop(0)
            strat.tell(proposal, oracle(*proposal.point))
            continue
        asked.append(p.point)
        outstanding.append(p)


def through_searcher(searcher: AskTellSearcher, oracle, stop_after: int | None = None) -> list[tuple[float, float]]:
    """What Tune does: suggest until None (wait) or FINISHED, complete the oldest running trial."""
    asked, running = [], []
    while stop_after is None or len(asked) < stop_after:
        counter = next(_TRIAL_NUMBERS)  # Tune never gives two trials one id
        config = searcher.suggest(f"trial-{counter}")
        if config == Searcher.FINISHED:
            return asked
        if config is None:
            trial_id, (lam, t) = running.pop(0)
            searcher.on_trial_complete(trial_id, {"flops_reduction": oracle(lam, t), "lam": lam, "t": t})
            continue
        assert set(config) == {"lam", "t", "proposal", "window"}
        assert searcher.proposals[f"trial-{counter}"] == config["proposal"]  # Tune's trial id -> the proposal's id
        asked.append((config["lam"], config["t"]))
        running.append((f"trial-{counter}", (config["lam"], config["t"])))
    return asked


@pytest.mark.parametrize("name", ["algorithm1", "kary"])
@pytest.mark.parametrize("oracle", [monotone, staircase])
def test_searcher_proposes_what_the_strategy_proposes_and_finishes(name, oracle):
    expected_strategy = strategy(name)
    expected = by_hand(expected_strategy, oracle)
    searcher = AskTellSearcher(strategy(name))
    asked = through_searcher(searcher, oracle)
    assert asked == expected
    assert len(asked) >= 2
    assert searcher.strategy.finished
    assert searcher.suggest("one-more") == Searcher.FINISHED
    assert searcher.strategy.best == expected_strategy.best
    assert searcher.strategy.reason == expected_strategy.reason
    assert searcher.strategy.history == expected_strategy.history


def test_kary_waits_for_its_round():
    searcher = AskTellSearcher(strategy("kary"))
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert all(isinstance(c, dict) for c in configs[:3])  # k = 3 trials of a round at once
    assert configs[3] is None  # WAIT: Tune asks again later
    assert searcher.suggest("t5") is None


@pytest.mark.parametrize("result, error", [
    (None, True),  # the trial raised
    ({"flops_reduction": math.nan, "status": "failed"}, False),  # NaN loss
    ({"status": "failed"}, False),  # no F at all
    ({"flops_reduction": None}, False),
])  # fmt: skip
def test_failed_trial_is_told_as_a_failed_outcome(result, error):
    searcher = AskTellSearcher(strategy("algorithm1"))
    config = searcher.suggest("a")
    searcher.on_trial_complete("a", result, error=error)
    assert searcher.strategy.history == [
        {"id": config["proposal"], "lam": config["lam"], "t": config["t"], "flops_reduction": None, "status": "failed",
         "decided": None}
    ]
    assert isinstance(searcher.suggest("b"), dict)  # the search goes on


def test_completion_of_an_unknown_trial_is_ignored():
    searcher = AskTellSearcher(strategy("algorithm1"))
    searcher.suggest("a")
    searcher.on_trial_complete("not-ours", {"flops_reduction": 0.1})
    searcher.on_trial_complete("a", {"flops_reduction": 0.1})
    searcher.on_trial_complete("a", {"flops_reduction": 0.1})  # twice: told once
    assert len(searcher.strategy.history) == 1


@pytest.mark.parametrize("name", ["algorithm1", "kary"])
def test_save_restore_continues_identically(tmp_path, name):
    oracle = staircase
    original = AskTellSearcher(strategy(name))
    first = through_searcher(original, oracle, stop_after=4)  # kary: a round is still running
    path = tmp_path / "state.json"
    original.save(str(path))
    assert json.loads(path.read_text())["strategy"]["strategy"] == name
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # written via a tmp file, replaced

    restored = AskTellSearcher(strategy(name))
    restored.restore(str(path))
    assert restored.strategy.state_dict() == original.strategy.state_dict()
    # Finish both the same way: the outstanding trials of `original` are those restored.
    assert restored.proposals == original.proposals
    for searcher in (original, restored):
        for p in searcher.strategy.outstanding:
            trial_id = next(k for k, v in searcher.proposals.items() if v == p.id)
            searcher.on_trial_complete(trial_id, {"flops_reduction": oracle(p.lam, p.t)})
    rest_original = through_searcher(original, oracle)
    rest_restored = through_searcher(restored, oracle)
    assert rest_restored == rest_original
    assert restored.strategy.history == original.strategy.history
    assert restored.strategy.reason == original.strategy.reason
    assert first  # the run did start before the save


def test_save_to_dir_and_restore_from_dir_use_json_files(tmp_path):
    searcher = AskTellSearcher(strategy("algorithm1"))
    through_searcher(searcher, monotone, stop_after=2)
    searcher.save_to_dir(str(tmp_path), session_str="s1")
    assert (tmp_path / "searcher-state-s1.json").is_file()
    again = AskTellSearcher(strategy("algorithm1"))
    again.restore_from_dir(str(tmp_path))
    assert again.strategy.state_dict() == searcher.strategy.state_dict()


def test_final_metrics_carry_stable_f_and_status():
    ok = TrialResult("stable", 0.42, 0.1, 0.8, 5, [{"loss": 1.5}])
    failed = TrialResult("failed", math.nan, None, math.nan, 2, [{"loss": 2.0}], "loss is NaN")
    assert final_metrics(ok, 1e-4, 1.2) == {
        "lam": 1e-4, "t": 1.2, "epoch": 5, "flops_reduction": 0.42, "val_accuracy": 0.8, "threshold": 0.1,
        "loss": 1.5, "status": "stable", "message": "",
    }  # fmt: skip
    row = final_metrics(failed, 1e-4, 1.2)
    assert math.isnan(row["flops_reduction"]) and math.isnan(row["threshold"])
    assert row["status"] == "failed" and row["message"] == "loss is NaN"


def test_trial_resources():
    cpu_box = RayInfo("a", None, True, cpus=8, gpus=0, token_auth=False)
    gpu_box = RayInfo("a", None, True, cpus=16, gpus=4, token_auth=False)
    assert trial_resources(cpu_box) == {"cpu": 8, "gpu": 0}  # one trial at a time gets every CPU
    assert trial_resources(cpu_box, parallel=3) == {"cpu": 2, "gpu": 0}
    assert trial_resources(gpu_box, parallel=4) == {"cpu": 4, "gpu": 1}
    assert trial_resources(gpu_box, gpus_per_trial=0.5, parallel=8) == {"cpu": 2, "gpu": 0.5}
    with pytest.raises(ResourceError, match="GPUs"):
        trial_resources(cpu_box, gpus_per_trial=1)


def test_check_ray_address(listener):
    port, close = listener
    with pytest.raises(RayAddressError, match="no Ray GCS answers"):  # a port that is not a GCS (see test_faults)
        check_ray_address(f"127.0.0.1:{port}", timeout=1)
    with pytest.raises(RayAddressError, match="Ray Client"):
        check_ray_address(f"ray://127.0.0.1:{port}")
    close()
    with pytest.raises(RayAddressError, match="no Ray GCS answers"):
        check_ray_address(f"127.0.0.1:{port}", timeout=1)  # closed now
    for bad in ("localhost", "127.0.0.1:", ":6379", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(RayAddressError, match="host:port"):
            check_ray_address(bad)


def oracle_trial(params: dict) -> None:
    """A trainable that 'trains' two epochs of the monotone oracle: the Tuner path without torch."""
    from ray import tune

    f = monotone(params["lam"], params["t"])
    tune.report({"lam": params["lam"], "t": params["t"], "epoch": 1, "flops_reduction": f / 2, "status": "running"})
    tune.report({"lam": params["lam"], "t": params["t"], "epoch": 2, "flops_reduction": f, "status": "stable"})


def collectors(epochs: list, ends: list):
    """Trial handlers that keep every result: (on_epoch, on_end)."""
    return (lambda trial_id, result: epochs.append(result)), (lambda trial_id, result: ends.append(result))


def test_trial_events_pickle_their_recipe_not_their_handlers():
    import ray.cloudpickle

    epochs, ends = [], []
    events = TrialEvents(collectors, epochs, ends)
    events.setup()
    copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(events))  # what a resumed Tuner gets back
    assert copy._handlers is None
    copy.setup()  # rebuilt in the process that runs the experiment

    class Trial:
        trial_id, config, last_result, error_file = "x", {"lam": 0.1, "t": 1.0}, {"epoch": 2}, None

    events.on_trial_result(0, [], Trial, {"status": "running", "epoch": 1})
    events.on_trial_result(0, [], Trial, {"status": "stable", "epoch": 2})
    events.on_trial_error(0, [], Trial)
    assert [r["epoch"] for r in epochs] == [1] and [r["status"] for r in ends] == ["stable", "failed"]
    assert math.isnan(ends[1]["flops_reduction"]) and ends[1]["lam"] == 0.1


@pytest.fixture
def workers_import_this_module():
    """The oracle trainable lives in a test module the Ray workers cannot import: ship it by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_tuner_on_a_local_loopback_ray_runs_the_strategy(tmp_path, workers_import_this_module):
    expected = by_hand(strategy("algorithm1"), monotone)
    epochs, ends = [], []
    searcher = AskTellSearcher(strategy("algorithm1"))
    with ray_session(num_cpus=1) as info:
        assert info.local and info.cpus == 1
        assert info.address.startswith("127.0.0.1:")
        assert info.dashboard_url.startswith("http://127.0.0.1:")
        port = info.address.rsplit(":", 1)[1]
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout.split("\n")
        gcs = [line.split()[3] for line in listening if line.split()[3:4] and line.split()[3].endswith(f":{port}")]
        assert gcs and all(a.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for a in gcs)  # loopback only
        run_tuner(oracle_trial, searcher, resources={"cpu": 1, "gpu": 0}, name="t", storage_path=tmp_path,
                  max_trials=15, callbacks=[TrialEvents(collectors, epochs, ends)])
    assert not ray.is_initialized()
    assert [(r["lam"], r["t"]) for r in ends] == expected
    assert [r["epoch"] for r in epochs] == [1] * len(expected)
    assert searcher.strategy.converged
    assert abs(searcher.strategy.best.flops_reduction - TARGET) <= DELTA
    saved = AskTellSearcher(strategy("algorithm1"))
    saved.restore_from_dir(str(tmp_path / "t"))  # what Tune saved at the end is the final state
    assert saved.strategy.state_dict() == searcher.strategy.state_dict()
