"""Measure the FLOPs-reduction surface F(λ, t) of candidate CPU regimes (issue 6).

Every point is a real trial through the project's own trainer (`trainers.trial.run_trial`); the
results, with the exact config, seed and commit, go to `experiments/results/<regime>.json`, and the
figures — F(λ, t) with the accuracy beside it, and the γ histograms behind a few points — to
`experiments/results/<regime>_surface.png` and `<regime>_gammas.png`. Points already measured are
kept, so an interrupted run continues where it stopped:

    python experiments/cpu_regime.py --data-dir ../shared/data/cifar10            # every regime
    python experiments/cpu_regime.py --data-dir ... --regime px16 --jobs 2        # one regime
    python experiments/cpu_regime.py --plot-only --table                          # figures, tables
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# Each regime: a preset, the fields it overrides, and the grid. λ = 0 with regularizer "none" is
# the unregularized reference for the accuracy.
REGIMES: dict[str, dict[str, Any]] = {
    # The regime issue 6 measured first: full 32×32 inputs, 8 epochs — a staircase in λ.
    "px32-8ep": {
        "preset": "cpu-quick",
        "overrides": {"downsample": 1, "batch_size": 128, "epochs": 8, "max_epochs": 8, "min_epochs": 8},
        "lams": [1e-3, 3e-3, 1e-2],
        "ts": [1.2],
        "seeds": [0],
    },
    # Issue 6's lead: 16×16 inputs (CIFAR-10 average-pooled by 2), 5,000 images, batch 64, 30 epochs.
    "px16": {
        "preset": "cpu-quick",
        # Pinned so the grid does not move with the preset. Rows stopped after epoch 20 under an
        # earlier min_epochs of 10 are the same trajectories, so they are kept.
        "overrides": {"downsample": 2, "subset": 5000, "batch_size": 64, "epochs": 30, "max_epochs": 30,
                      "min_epochs": 20, "patience": 3, "f_tol": 0.01},
        "lams": [3e-4, 5e-4, 7e-4, 1e-3, 2e-3, 3e-3],
        "ts": [1.2],
        "seeds": [0],
        "t_sweep": {"lams": [5e-4, 1e-3, 2e-3], "ts": [0.8, 1.6]},
        "spread": {"points": [[7e-4, 1.2], [2e-3, 1.2]], "seeds": [1, 2]},
        # Where the grid says targets 0.3 / 0.5 / 0.7 lie, and the t steps Algorithm 1 would take there.
        "extra": [[4e-4, 1.2], [5e-4, 1.1], [7.5e-4, 1.1]],
    },
    # Issue 13's recorded surface: px16's trials on a (log λ) × t grid with per-epoch F and accuracy,
    # the replay oracle of bench/ (search cost). Points px16 measured already are reused, not rerun.
    "px16-surface": {
        "preset": "cpu-quick",
        "overrides": {"downsample": 2, "subset": 5000, "batch_size": 64, "epochs": 30, "max_epochs": 30,
                      "min_epochs": 20, "patience": 3, "f_tol": 0.01},
        "lams": [1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 3e-3],
        "ts": [0.6, 0.9, 1.2, 1.5, 1.8],
        "seeds": [0],
        "spread": {"points": [[lam, 1.2] for lam in (1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 3e-3)], "seeds": [1]},
        "reference": False,
        "reuse": "px16",
        # coarse first, so that a partial surface already spans the grid
        "order": [3e-4, 1e-3, 3e-3, 1e-4, 2e-3, 5e-4, 2e-4],
    },
}
HISTOGRAM_POINTS = 4


def grid(regime: dict[str, Any]) -> list[tuple[float, float, int]]:
    """Every (λ, t, seed) to measure in a regime, the unregularized reference (λ = 0) first."""
    points = [(0.0, regime["ts"][0], seed) for seed in regime["seeds"]] if regime.get("reference", True) else []
    points += [(lam, t, seed) for seed in regime["seeds"] for t in regime["ts"] for lam in regime["lams"]]
    sweep = regime.get("t_sweep", {})
    points += [(lam, t, seed) for seed in regime["seeds"] for t in sweep.get("ts", []) for lam in sweep.get("lams", [])]
    spread = regime.get("spread", {})
    points += [(lam, t, seed) for seed in spread.get("seeds", []) for lam, t in spread.get("points", [])]
    points += [(lam, t, seed) for seed in regime["seeds"] for lam, t in regime.get("extra", [])]
    return points


def measure(preset: str, overrides: dict[str, Any], lam: float, t: float, seed: int) -> dict[str, Any]:
    """One trial; returns its row: F, accuracy, epochs, status, time, per-epoch F and the final γ."""
    from pruning.prunable import scaling_factors
    from pruning.threshold import all_gammas
    from trainers import models
    from trainers.config import load_config
    from trainers.trial import run_trial

    fields = {**overrides, "seed": seed, "threads": 1}
    if lam == 0.0:  # the reference trains every epoch: its F stays 0 and would stop it early
        fields.update(regularizer="none", min_epochs=load_config(preset, overrides).max_epochs)
    config = load_config(preset, fields)
    start = time.perf_counter()
    result = run_trial(config, lam, t)
    seconds = time.perf_counter() - start
    gammas: list[float] = []
    if result.model_state is not None:
        model = models.build(config.model, 10)
        model.load_state_dict(result.model_state)
        gammas = [round(g, 5) for g in all_gammas(scaling_factors(model)).tolist()]
    return {
        "lam": lam, "t": t, "seed": seed, "status": result.status, "epochs": result.epochs,
        "flops_reduction": result.flops_reduction, "threshold": result.threshold,
        "val_accuracy": result.val_accuracy, "seconds": round(seconds, 1),
        "f_per_epoch": [round(h["flops_reduction"], 4) for h in result.history],
        "acc_per_epoch": [round(h["val_accuracy"], 4) for h in result.history],
        "gammas": gammas, "config": config.to_dict(),
    }  # fmt: skip


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_regime(name: str, data_dir: str, jobs: int) -> Path:
    regime = REGIMES[name]
    path = RESULTS / f"{name}.json"
    record = json.loads(path.read_text()) if path.is_file() else {"regime": name, "rows": []}
    record.update(preset=regime["preset"], overrides=regime["overrides"], data_dir=str(data_dir))
    done = {(r["lam"], r["t"], r["seed"]) for r in record["rows"]}
    if "reuse" in regime:  # measured in another regime with the same settings
        done |= {(r["lam"], r["t"], r["seed"]) for r in json.loads((RESULTS / f"{regime['reuse']}.json").read_text())["rows"]}
    todo = [p for p in grid(regime) if p not in done]
    if "order" in regime:
        todo.sort(key=lambda p: (p[2], regime["order"].index(p[0]) if p[0] in regime["order"] else 99, p[1]))
    overrides = {**regime["overrides"], "data_dir": str(data_dir)}
    print(f"{name}: {len(done)} points measured, {len(todo)} to go", flush=True)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(measure, regime["preset"], overrides, *p): p for p in todo}
        for future in as_completed(futures):
            row = future.result()
            row["commit"] = commit()
            record["rows"].append(row)
            record["rows"].sort(key=lambda r: (r["seed"], r["t"], r["lam"]))
            _write_json(path, record)
            print(f"  λ={row['lam']:.1e} t={row['t']:.1f} seed={row['seed']}: F={row['flops_reduction']:.3f} "
                  f"acc={row['val_accuracy']:.3f} epochs={row['epochs']} {row['status']} {row['seconds']}s",
                  flush=True)  # fmt: skip
    return path


def _write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, path)


def plot(path: Path) -> None:
    """The F(λ, t) surface (one line per t, seed 0, with the spread over seeds as error bars where
    measured), the accuracy beside it, and the γ histograms of a few points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = json.loads(path.read_text())
    rows = [r for r in record["rows"] if r["lam"] > 0]
    reference = [r for r in record["rows"] if r["lam"] == 0]
    fig, (ax_f, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for t in sorted({r["t"] for r in rows}):
        line = sorted((r for r in rows if r["t"] == t and r["seed"] == 0), key=lambda r: r["lam"])
        lams = [r["lam"] for r in line]
        ax_f.plot(lams, [r["flops_reduction"] for r in line], "o-", label=f"t = {t:.1f}")
        ax_acc.plot(lams, [r["val_accuracy"] for r in line], "o-", label=f"t = {t:.1f}")
        for lam in lams:
            spread = [r["flops_reduction"] for r in rows if r["t"] == t and r["lam"] == lam]
            if len(spread) > 1:
                ax_f.errorbar([lam], [sum(spread) / len(spread)], yerr=[[sum(spread) / len(spread) - min(spread)],
                              [max(spread) - sum(spread) / len(spread)]], color="k", capsize=3)  # fmt: skip
    for r in reference:
        ax_acc.axhline(r["val_accuracy"], color="grey", ls="--", label="no regularizer" if r["seed"] == 0 else None)
    ticks = sorted({r["lam"] for r in rows})
    for ax, label in ((ax_f, "FLOPs reduction F"), (ax_acc, "validation accuracy")):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{lam:.0e}" for lam in ticks], rotation=45, fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("λ")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{record['regime']}: F(λ, t) (commit {rows[0]['commit'] if rows else '?'})")
    fig.tight_layout()
    fig.savefig(path.with_name(f"{record['regime']}_surface.png"), dpi=90)
    plt.close(fig)

    chosen = _histogram_points(rows + reference)
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3), squeeze=False)
    for ax, r in zip(axes[0], chosen, strict=True):
        ax.hist(r["gammas"], bins=100, range=(0.0, 1.0))
        if r["threshold"] is not None:
            ax.axvline(r["threshold"], color="r", lw=1)
        ax.set_title(f"λ={r['lam']:.0e} t={r['t']:.1f}: F={r['flops_reduction']:.2f}", fontsize=9)
        ax.set_xlabel("γ")
    fig.tight_layout()
    fig.savefig(path.with_name(f"{record['regime']}_gammas.png"), dpi=90)
    plt.close(fig)


def _histogram_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reference and a few regularized points spread over λ at the middle t (seed 0)."""
    seed0 = [r for r in rows if r["seed"] == 0 and r["gammas"]]
    ts = sorted({r["t"] for r in seed0 if r["lam"] > 0})
    middle = ts[len(ts) // 2] if ts else None
    line = sorted((r for r in seed0 if r["t"] == middle and r["lam"] > 0), key=lambda r: r["lam"])
    step = max(1, len(line) // (HISTOGRAM_POINTS - 1))
    return [r for r in seed0 if r["lam"] == 0][:1] + line[::step][: HISTOGRAM_POINTS - 1]


def table(path: Path) -> str:
    """The measured points as a Markdown table (for docs/cpu-regime.md)."""
    record = json.loads(path.read_text())
    lines = ["| λ | t | seed | F | val. accuracy | epochs | status | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(record["rows"], key=lambda r: (r["t"], r["lam"], r["seed"])):
        lines.append(f"| {r['lam']:.0e} | {r['t']:.1f} | {r['seed']} | {r['flops_reduction']:.3f} | "
                     f"{r['val_accuracy']:.3f} | {r['epochs']} | {r['status']} | {r['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="CIFAR-10 (torchvision files or an ImageFolder tree)")
    parser.add_argument("--regime", action="append", choices=sorted(REGIMES), help="default: all")
    parser.add_argument("--jobs", type=int, default=2, help="trials side by side, one thread each")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the results as Markdown tables")
    args = parser.parse_args()
    names = args.regime or list(REGIMES)
    if not args.plot_only and not args.data_dir:
        parser.error("--data-dir is required to measure")
    for name in names:
        path = RESULTS / f"{name}.json" if args.plot_only else run_regime(name, args.data_dir, args.jobs)
        if path.is_file():
            plot(path)
            if args.table:
                print(f"\n{name}\n{table(path)}")


if __name__ == "__main__":
    main()
