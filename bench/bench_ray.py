"""Ray's cost in a search: start-up to the first trial, and the overhead per trial.

N trivial trials (each "trains" `--work` seconds and reports two epochs) go through the search's own
Tuner path - `search.ray_cluster.ray_session` (the embedded local Ray, dashboard on), `run_tuner` with
`reuse_actors`, `AskTellSearcher` over an ask/tell strategy and the `TrialEvents` callback - and then
through a plain Python loop calling the same trial function. Printed: seconds, per-trial overhead
(Tune − loop) / N and the ratio Tune / loop. Budgets (issue 5): start-up ≤ 15 s, overhead ≤ 2 s.

    .venv/bin/python bench/bench_ray.py [--trials 20] [--work 0.05]
"""

from __future__ import annotations

import argparse
import tempfile
import time

START = time.perf_counter()  # before Ray is imported: start-up counts the import too


class FixedProposals:
    """An ask/tell strategy proposing N (λ, t) one at a time (the sequential case of Algorithm 1)."""

    def __init__(self, n: int) -> None:
        self.n, self.told, self.outstanding = n, [], None

    def ask(self):
        from search.strategies import WAIT, Proposal

        if self.outstanding is not None:
            return WAIT
        if len(self.told) == self.n:
            return None
        self.outstanding = Proposal(len(self.told), 1e-4 * (1 + len(self.told)), 1.2)
        return self.outstanding

    def tell(self, proposal, flops_reduction) -> None:
        self.told.append((self.outstanding.point, flops_reduction))
        self.outstanding = None

    def state_dict(self) -> dict:
        return {"told": self.told, "outstanding": self.outstanding}


def trivial_trial(params: dict, work: float, report) -> None:
    """What a trial does, minus the training: two epochs of `work / 2` seconds, each reported."""
    for epoch in (1, 2):
        time.sleep(work / 2)
        report({"lam": params["lam"], "t": params["t"], "epoch": epoch, "flops_reduction": params["lam"] * 1e3,
                "val_accuracy": 0.5, "status": "running" if epoch == 1 else "stable"})  # fmt: skip


def tune_trial(params: dict, work: float) -> None:
    from ray import tune

    trivial_trial(params, work, tune.report)


def timestamps(first: list, ends: list):
    """Trial handlers for TrialEvents: the time of the first result, and of every trial's end."""
    return (lambda trial_id, result: first.append(time.perf_counter())), (
        lambda trial_id, result: ends.append(time.perf_counter()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--work", type=float, default=0.05, help="seconds of 'training' per trial")
    args = parser.parse_args()

    from ray import tune

    from search.ray_cluster import dashboard_hint, ray_session
    from search.tune import AskTellSearcher, TrialEvents, run_tuner

    first, ends = [], []
    with ray_session() as info, tempfile.TemporaryDirectory() as storage:
        ray_up = time.perf_counter()
        print(dashboard_hint(info))
        searcher = AskTellSearcher(FixedProposals(args.trials))
        tuner_start = time.perf_counter()
        run_tuner(tune.with_parameters(tune_trial, work=args.work), searcher, resources={"cpu": info.cpus, "gpu": 0},
                  name="bench", storage_path=storage, max_trials=args.trials, verbose=0,
                  callbacks=[TrialEvents(timestamps, first, ends)])  # fmt: skip
        tuner_end = time.perf_counter()
    assert len(ends) == args.trials == len(searcher.strategy.told), "every trial must have run"

    loop_start = time.perf_counter()
    strategy = FixedProposals(args.trials)
    while (p := strategy.ask()) is not None:
        reports = []
        trivial_trial({"lam": p.lam, "t": p.t}, args.work, reports.append)
        strategy.tell(p, reports[-1]["flops_reduction"])
    loop = time.perf_counter() - loop_start

    startup = first[0] - START
    # Trials after the first: the steady state (the first one pays for starting its actor).
    steady = ends[-1] - ends[0]
    per_trial_tune = steady / (args.trials - 1)
    per_trial_loop = loop / args.trials
    print(f"import ray + ray.init (embedded, dashboard on): {ray_up - START:.2f} s")
    print(f"start-up to the first trial's first result:     {startup:.2f} s (budget 15 s)")
    print(f"Tuner.fit for {args.trials} trials:                      {tuner_end - tuner_start:.2f} s")
    print(f"per trial, steady state: Tune {per_trial_tune:.3f} s, plain loop {per_trial_loop:.3f} s")
    print(f"Ray overhead per trial:                          {per_trial_tune - per_trial_loop:.3f} s (budget 2 s)")
    print(f"ratio Tune / loop per trial:                     {per_trial_tune / per_trial_loop:.2f}")


if __name__ == "__main__":
    main()
