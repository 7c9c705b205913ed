"""The cost of a search on the recorded cpu-quick surface (issue 13): every strategy, with and without
early decisions, in trials and trial-epochs, side by side on the same replayed trials.

The *replay oracle*: a trial at (λ, t) gets the per-epoch F trajectory interpolated from the recorded
neighbours (inverse-distance weights over log λ and t, seed 0, experiments/results/px16*.json),
plus a per-trial offset drawn from the seed-to-seed spread measured there (scaled along the
trajectory). It stops where a real trial would (trainers.trial.is_stable with cpu-quick's rule).

    python bench/bench_search_cost.py                       # the full table -> bench/results/search-cost.json
    python bench/bench_search_cost.py --quick               # fewer noise seeds (make bench)
    python bench/bench_search_cost.py --bounds              # the early-decision bounds from px16.json

Beside early decisions off and on, each strategy runs with *foresight*: a rule no real search can
have, which knows each trial's stable F and decides at epoch 2 every trial that lands outside the
window asked about, telling the strategy that stable F. It bounds what any early-decision rule
can save on this surface.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search import strategies  # noqa: E402
from search.settings import SearchSettings  # noqa: E402
from search.strategies.early import ABOVE, BELOW, CPU_QUICK, Decision, RiseBounds  # noqa: E402
from search.strategies.replay import replay  # noqa: E402
from trainers.config import load_config, preset_section  # noqa: E402
from trainers.trial import is_stable  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
SURFACES = ("px16.json", "px16-surface.json")
TARGETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DELTAS = (0.05, 0.03)
# (label, strategy, parallel)
STRATEGIES = (("algorithm1", "algorithm1", 1), ("kary k=2", "kary", 2), ("kary k=4", "kary", 4),
              ("secant", "secant", 1), ("optuna", "optuna", 1))  # fmt: skip
FORESIGHT = "foresight"
RULES = (False, True, FORESIGHT)  # early decisions off, on (search.strategies.early), with foresight
# (label, strategy): searches that start from the stable trials of the same user's earlier searches
RECALLING = (("algorithm1 + earlier trials", "algorithm1"), ("secant + earlier trials", "secant"))


def recorded_rows() -> list[dict]:
    rows = []
    for name in SURFACES:
        path = RESULTS / name
        if path.is_file():
            rows += [r for r in json.loads(path.read_text())["rows"] if r["lam"] > 0 and r.get("f_per_epoch")]
    return rows


def seed_spread(rows: list[dict]) -> float:
    """The standard deviation of the stable F between seeds at the same (λ, t)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["lam"], r["t"])].append(r["flops_reduction"])
    deviations = [f - statistics.mean(fs) for fs in groups.values() if len(fs) > 1 for f in fs]
    return math.sqrt(sum(d * d for d in deviations) / max(1, len(deviations) - 1)) if deviations else 0.0


class Surface:
    """The replay oracle: per-epoch F at any (λ, t), from the recorded seed-0 trajectories."""

    def __init__(self, rows: list[dict], max_epochs: int, sigma: float, seed: int) -> None:
        self.points = [(math.log10(r["lam"]), r["t"], self._padded(r["f_per_epoch"], max_epochs))
                       for r in rows if r["seed"] == 0]  # fmt: skip
        self.sigma, self.rng = sigma, random.Random(seed)

    @staticmethod
    def _padded(fs: list[float], n: int) -> list[float]:
        return (list(fs) + [fs[-1]] * n)[:n]

    def __call__(self, lam: float, t: float) -> list[float]:
        x = math.log10(max(lam, 1e-6))
        dist = sorted(((((x - px) / 1.5) ** 2 + ((t - pt) / 1.2) ** 2, fs) for px, pt, fs in self.points),
                      key=lambda item: item[0])[:4]  # fmt: skip
        if dist[0][0] < 1e-12:
            mean = dist[0][1]
        else:
            weights = [1 / d for d, _ in dist]
            mean = [sum(w * fs[k] for w, (_, fs) in zip(weights, dist, strict=True)) / sum(weights)
                    for k in range(len(dist[0][1]))]  # fmt: skip
        offset, final = self.rng.gauss(0.0, self.sigma), max(mean[-1], 1e-9)
        self.last = [min(1.0, max(0.0, f + offset * f / final)) for f in mean]
        return self.last


def foresight(surface: Surface, stable, min_epochs: int = 2, gap: float = 0.0):
    """The rule that knows the stable F of the trial replayed now (`surface.last`): at `min_epochs`
    it decides every trial whose stable F is more than `gap` outside the window, with that F as its
    forecast."""

    def rule(window, fs, max_epochs):
        if len(fs) != min_epochs:
            return None
        full = surface.last[:max_epochs]
        final = next((full[k - 1] for k in range(1, len(full) + 1) if stable(full[:k])), full[-1])
        if window[0] - gap <= final <= window[1] + gap:
            return None
        return Decision(ABOVE if final > window[1] else BELOW, len(fs), fs[-1], final, final, final)

    return rule


def stable_rule(config):
    """trainers.trial.is_stable on a list of F values: where a real trial of `config` stops."""
    return lambda fs: is_stable([{"flops_reduction": f} for f in fs], config)


def _context(max_trials: int) -> tuple:
    """What every replayed search shares: the recorded rows, cpu-quick's Config and search settings,
    the seed-to-seed σ and the trial's stopping rule."""
    rows, config = recorded_rows(), load_config("cpu-quick")
    search = {**preset_section("cpu-quick"), "max_trials": max_trials}
    return rows, config, search, seed_spread(rows), stable_rule(config)


def _search(context: tuple, strategy: str, target: float, seed: int, delta: float, early, parallel: int = 1,
            rule_of=None, known: list | None = None):  # fmt: skip
    """One search replayed on its own noise draw: (the strategy as it ended, its Cost); `known`: the
    trials it starts from (Strategy.recall)."""
    rows, config, search, sigma, stable = context
    built = strategies.build(SearchSettings(**search, target=target, delta=delta, strategy=strategy, parallel=parallel,
                                            seed=seed, early_decisions=bool(early)))  # fmt: skip
    if known is not None:
        built.recall(known)
    surface = Surface(rows, config.max_epochs, sigma, seed=1000 * seed + int(100 * target))
    rule = rule_of(surface) if rule_of else None
    return built, replay(built, surface, stable, config.max_epochs, rule=rule)


def replayed(strategy: str, delta: float, seeds: int, early: bool = True, parallel: int = 1, max_trials: int = 20,
             rule_of=None):  # fmt: skip
    """(target, noise seed, Cost) of `strategy` for every target × `seeds` noise seeds; each trial is
    decided by `rule_of(surface)` (None: search.strategies.early's rule, when `early`)."""
    context = _context(max_trials)
    for target in TARGETS:
        for seed in range(seeds):
            yield target, seed, _search(context, strategy, target, seed, delta, early, parallel, rule_of)[1]


def recalled(strategy: str, delta: float, seeds: int, early: bool, max_trials: int = 20):
    """(target, noise seed, Cost) as `replayed`, but per noise seed the six targets are one user's
    searches in a random order, each started (Strategy.recall) from the stable trials of the ones
    before it; a trial's replayed F is drawn afresh (its own noise), as a new trial's would be."""
    context = _context(max_trials)
    for seed in range(seeds):
        known: list[tuple[float, float, float]] = []
        for target in random.Random(seed).sample(TARGETS, len(TARGETS)):
            built, cost = _search(context, strategy, target, seed, delta, early, known=known)
            yield target, seed, cost
            known += [(tr.lam, tr.t, tr.flops_reduction) for tr in built.trials if not tr.failed and not tr.decided]


def run(seeds: int, max_trials: int) -> dict:
    rows, _, search, sigma, stable = _context(max_trials)
    results = []
    for label, name, parallel in STRATEGIES:
        for early in RULES:
            for delta in DELTAS:
                rule_of = (lambda surface: foresight(surface, stable)) if early == FORESIGHT else None
                results += [_row(label, early, delta, *done)
                            for done in replayed(name, delta, seeds, early, parallel, max_trials, rule_of)]
    for label, name in RECALLING:
        for early in (False, True):
            for delta in DELTAS:
                results += [_row(label, early, delta, *done) for done in recalled(name, delta, seeds, early, max_trials)]
    return {"rows_recorded": len(rows), "sigma": sigma, "seeds": seeds, "max_trials": max_trials,
            "settings": search, "commit": _commit(), "results": results}  # fmt: skip


def _row(label: str, early, delta: float, target: float, seed: int, cost) -> dict:
    return {"strategy": label, "early": early, "delta": delta, "target": target, "seed": seed,
            "trials": cost.trials, "epochs": cost.epochs, "rounds": cost.rounds, "converged": cost.converged,
            "decided": cost.decided, "reason": cost.reason}  # fmt: skip


def table(record: dict) -> str:
    """Markdown: per strategy and rule, median trials and trial-epochs, hit rate, epochs vs Algorithm 1 without."""
    groups = defaultdict(list)
    for r in record["results"]:
        groups[(r["strategy"], r["early"], r["delta"])].append(r)
    lines = []
    for delta in DELTAS:
        base = statistics.median(r["epochs"] for r in groups[("algorithm1", False, delta)])
        lines += [f"\nδ = {delta} (targets {', '.join(map(str, TARGETS))}; {record['seeds']} noise seeds each)\n",
                  "| strategy | early decisions | trials (median) | rounds (median) | trial-epochs (median) "
                  "| hit rate | trial-epochs vs Algorithm 1 without |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for label in [label for label, _, _ in STRATEGIES] + [label for label, _ in RECALLING]:
            for early in RULES:
                rs = groups[(label, early, delta)]
                if not rs:
                    continue
                epochs = statistics.median(r["epochs"] for r in rs)
                shown = {False: "off", True: "on", FORESIGHT: "foresight (bound)"}[early]
                lines.append(f"| {label} | {shown} | {statistics.median(r['trials'] for r in rs):g} "
                             f"| {statistics.median(r['rounds'] for r in rs):g} | {epochs:g} "
                             f"| {sum(r['converged'] for r in rs) / len(rs):.2f} | {epochs / base:.2f} |")  # fmt: skip
    return "\n".join(lines)


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="noise seeds per target")
    parser.add_argument("--max-trials", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 noise seeds, no file written")
    parser.add_argument("--bounds", action="store_true", help="print the early-decision bounds of the recorded trials")
    args = parser.parse_args()
    if args.bounds:
        print(RiseBounds.measure([r["f_per_epoch"] for r in recorded_rows()], 30, margin=CPU_QUICK.margin))
        return
    record = run(3 if args.quick else args.seeds, args.max_trials)
    print(f"{record['rows_recorded']} recorded trials, seed-to-seed σ = {record['sigma']:.3f}")
    print(table(record))
    if not args.quick:
        out = ROOT / "bench" / "results" / "search-cost.json"
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"written: {out}")


if __name__ == "__main__":
    main()
