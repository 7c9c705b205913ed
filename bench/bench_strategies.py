"""Trials-to-target of every search strategy on the oracles of tests/search/test_strategies.py.

    python bench/bench_strategies.py [--max-trials 20] [--delta 0.05] [--k 4] [--seeds 1]

Each cell gives, for the targets 0.3 / 0.5 / 0.7, the number of trials a strategy trained before
|F − F*| ≤ δ; "n×" means it stopped after n trials without reaching the window (the reasons follow
the table). kary runs k trials per round: its rounds are given in brackets. With --seeds > 1 the
seeded oracles (noisy, failing) and Optuna's sampler are run with each seed and the cells are means.
No training: the oracles are plain functions F(λ, t), so this measures the search logic alone.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import statistics
from pathlib import Path

from search import strategies
from search.settings import SearchSettings

STRATEGIES = strategies.names()

TARGETS = (0.3, 0.5, 0.7)


def load_oracles() -> dict:
    """ORACLES and the `run` driver of the strategy tests, so the bench counts on the tested oracles."""
    path = Path(__file__).resolve().parents[1] / "tests" / "search" / "test_strategies.py"
    spec = importlib.util.spec_from_file_location("strategy_oracles", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-trials", type=int, default=20)
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--k", type=int, default=4, help="kary's trials per round")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args(argv)
    tests = load_oracles()
    reasons: dict[str, collections.Counter] = {name: collections.Counter() for name in STRATEGIES}
    width = 26
    print(f"{'oracle':<12}" + "".join(f"{name:<{width}}" for name in STRATEGIES))
    for oracle, factory in tests.ORACLES.items():
        row = f"{oracle:<12}"
        for name in STRATEGIES:
            cells, rounds_all = [], []
            for target in TARGETS:
                trials, rounds, hits = [], [], 0
                for seed in range(args.seeds):
                    settings = SearchSettings(target=target, delta=args.delta, strategy=name, seed=seed,
                                              max_trials=args.max_trials, parallel=args.k if name == "kary" else 1)
                    strategy = strategies.build(settings)
                    n, r = tests.run(strategy, factory(seed=seed))
                    trials.append(n)
                    rounds.append(r)
                    hits += strategy.converged
                    if not strategy.converged:
                        reasons[name][strategy.reason] += 1
                mean = statistics.mean(trials)
                text = f"{mean:.0f}" if args.seeds == 1 else f"{mean:.1f}"
                cells.append(text + ("" if hits == args.seeds else "×"))
                rounds_all.append(statistics.mean(rounds))
            cell = "/".join(cells)
            if name == "kary":
                cell += " (" + "/".join(f"{r:.0f}" for r in rounds_all) + ")"
            row += f"{cell:<{width}}"
        print(row)
    print(f"\ntargets {'/'.join(map(str, TARGETS))}, delta {args.delta}, max_trials {args.max_trials}, "
          f"kary k={args.k}; n× = stopped without reaching the window. Why they stopped:")
    for name, counter in reasons.items():
        print(f"  {name}: " + "; ".join(f"{reason} ×{n}" for reason, n in counter.most_common()))


if __name__ == "__main__":
    main()
