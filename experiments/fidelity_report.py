"""Issue 11's tables and figures from experiments/results/fidelity.json (run experiments/fidelity.py first).

    python experiments/fidelity_report.py --data-dir ../shared/data/cifar10

(a) the γ histograms after training (the paper's Figure 1) and the margin number, the fraction of
|γ| in (0.05, 0.15); (b) fine-tuned accuracy at equal F per method; (c) per-layer vs global
threshold and the authors' vs all prunable set: F on px16's 19 polarized γ sets (F depends on γ
only), F and accuracy right after pruning on the cached trained networks (rows in
results/fidelity_posthoc.json, each measured once); (d) Theorem 3.2: the regularizer alone,
minimised exactly (every vertex of [0, 1]^n, n = 12) and by projected subgradient descent from
two starts, against ρ(t) = 1/2 − t/4. Figures: results/fidelity_gammas.png, fidelity_theorem.png;
the tables are printed in Markdown (docs/fidelity.md holds them).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from fidelity import OUT, PRESET, RESULTS, _write

POSTHOC = RESULTS / "fidelity_posthoc.json"  # its own file: fidelity.py may be writing OUT meanwhile

MARGIN = (0.05, 0.15)


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f} (n=1)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def margin(gammas: list[float]) -> float:
    return sum(MARGIN[0] < abs(g) < MARGIN[1] for g in gammas) / len(gammas)


def histograms(rows: dict[str, dict[str, Any]], none: dict[str, Any] | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("no regularizer (px16 λ = 0, 30 epochs)", [none] if none else [])]
    panels += [(title, [r for k, r in rows.items() if k.startswith(f"train/{kind}/")])
               for title, kind in (("L1 (Network Slimming)", "l1"), ("polarization λ_a", "pol_a"),
                                   ("polarization λ_b", "pol_b"))]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), sharey=False)
    lines = ["| regularizer | fraction of |γ| in (0.05, 0.15) | fraction of |γ| < 0.01 |", "|---|---|---|"]
    for ax, (title, group) in zip(axes, panels, strict=True):
        values = [abs(g) for r in group for g in r["gammas"]]
        if values:
            ax.hist(values, bins=[i / 100 for i in range(int(max(1.0, max(values)) * 100) + 2)])
        ax.axvspan(*MARGIN, color="orange", alpha=0.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("|γ|")
        lines.append(f"| {title} | {mean_std([margin(r['gammas']) for r in group])} | "
                     f"{mean_std([sum(abs(g) < 0.01 for g in r['gammas']) / len(r['gammas']) for r in group])} |")
    fig.tight_layout()
    fig.savefig(RESULTS / "fidelity_gammas.png", dpi=110)
    return lines


def equal_f(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| target | method | F | acc. after pruning | acc. fine-tuned | seeds |", "|---|---|---|---|---|---|"]
    for pol in ("pol_c", "pol_a", "pol_b"):
        for method, prefix in (("polarization", f"ft/{pol}/global/"), ("L1 + percentile (NS)", f"ft/l1@{pol}/"),
                               ("uniform width", f"uniform@{pol}/")):  # fmt: skip
            group = [r for k, r in rows.items() if k.startswith(prefix)]
            seeds = ", ".join(str(r["seed"]) for r in group) or "—"
            lines.append(f"| {pol} | {method} | {mean_std([r['F'] for r in group])} | "
                         f"{mean_std([r['acc_pruned'] for r in group])} | "
                         f"{mean_std([r['acc_finetuned'] for r in group])} | {seeds} |")
    return lines


def scopes_on_px16() -> list[str]:
    """F of global vs per-layer threshold, all vs authors' set, on px16's polarized γ sets."""
    from pruning.flops import count_flops
    from pruning.prunable import prunable_bns
    from trainers import models
    from trainers.config import Config
    from trainers.pruning_rule import choose

    px16 = json.loads((RESULTS / "px16.json").read_text())["rows"]
    shape = (3, 16, 16)
    model = models.build("resnet20", 10)
    every, authors = prunable_bns(model, "all"), prunable_bns(model, "authors")
    full = count_flops(model, shape)
    diffs: dict[str, list[float]] = {"per_layer − global (all)": [], "authors − all (global)": [],
                                     "authors per_layer − all global": []}  # fmt: skip
    for row in (r for r in px16 if r["lam"] > 0):
        values = iter(row["gammas"])
        with torch.no_grad():
            for bn in every:
                bn.weight.copy_(torch.tensor([next(values) for _ in range(bn.num_features)]))
        f = {(scope, name): choose(model, bns, Config(threshold_scope=scope), shape, full).flops_reduction
             for scope in ("global", "per_layer") for name, bns in (("all", every), ("authors", authors))}
        diffs["per_layer − global (all)"].append(f["per_layer", "all"] - f["global", "all"])
        diffs["authors − all (global)"].append(f["global", "authors"] - f["global", "all"])
        diffs["authors per_layer − all global"].append(f["per_layer", "authors"] - f["global", "all"])
    lines = [f"| F difference on px16's {len(diffs['authors − all (global)'])} polarized γ sets | mean | mean abs. "
             "| min | max |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {statistics.mean(v):+.3f} | {statistics.mean(map(abs, v)):.3f} | {min(v):+.3f} | "
              f"{max(v):+.3f} |" for k, v in diffs.items()]
    return lines


def posthoc(rows: dict[str, dict[str, Any]], data_dir: str) -> list[str]:
    """F and accuracy right after pruning, per (scope, set), on the cached trained networks."""
    variants = [(k, scope, name) for k in rows if k.startswith("train/pol")
                for scope in ("global", "per_layer") for name in ("all", "authors")
                if not (k.startswith("train/pol_a_authors/") and name == "all")]  # fmt: skip
    done = {r["id"]: r for r in json.loads(POSTHOC.read_text())["rows"]} if POSTHOC.is_file() else {}
    todo = [v for v in variants if f"posthoc/{v[0]}/{v[1]}/{v[2]}" not in done]
    if todo:
        _measure_posthoc(rows, done, todo, data_dir)
    rows = {**rows, **done}
    lines = ["| trained | threshold | pruned set | F | acc. after pruning |", "|---|---|---|---|---|"]
    for kind in ("pol_c", "pol_a", "pol_a_authors", "pol_b"):
        for scope, name in itertools.product(("global", "per_layer"), ("all", "authors")):
            group = [r for k, r in rows.items() if k.startswith("posthoc/train/" + kind + "/")
                     and k.endswith(f"/{scope}/{name}")]  # fmt: skip
            if group:
                lines.append(f"| {kind} | {scope} | {name} | {mean_std([r['F'] for r in group])} | "
                             f"{mean_std([r['acc_pruned'] for r in group])} |")
    return lines


def _measure_posthoc(rows: dict[str, dict[str, Any]], done: dict[str, dict[str, Any]],
                     todo: list[tuple[str, str, str]], data_dir: str) -> None:  # fmt: skip
    from fidelity import _prune

    from trainers import loop
    from trainers.config import cache_root, load_config
    from trainers.trial import load_splits, start_model

    torch.set_num_threads(1)
    splits = None
    for train_id, scope, name in todo:
        trained = rows[train_id]
        config = load_config(PRESET, {**trained["config"], "data_dir": data_dir})
        splits = splits or load_splits(config, torch.device("cpu"))
        model, _ = start_model(config, splits, torch.device("cpu"))
        model.load_state_dict(torch.load(cache_root(config) / "fidelity" / f"{train_id.replace('/', '_')}.pt"))
        variant = dataclasses.replace(config, threshold_scope=scope, prunable_set=name)
        pruned, f, threshold = _prune(model, variant, tuple(splits.input_shape), splits.num_classes)
        accuracy, _ = loop.evaluate(pruned, splits.test)
        key = f"posthoc/{train_id}/{scope}/{name}"
        done[key] = {"id": key, "kind": "posthoc", "seed": trained["seed"], "F": f, "threshold": threshold,
                     "acc_pruned": accuracy, "config": variant.to_dict(), "commit": trained["commit"]}  # fmt: skip
        _write(done, POSTHOC, PRESET)
        print(f"{key}: F {f:.3f} acc {accuracy:.3f}", flush=True)


def theorem(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Theorem 3.2 (§3.2): the fraction of zeros 1 − ρ(t) = t/4 + 1/2 (clipped to [0, 1])."""
    import matplotlib.pyplot as plt

    from pruning.regularizers import polarization

    ts = [-2.5, -1.5, -1.0, -0.5, 0.0, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5]
    predicted = [min(1.0, max(0.0, t / 4 + 0.5)) for t in ts]
    n = 12
    vertices = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)))
    exact = []
    for t in ts:
        values = t * vertices.sum(1) - (vertices - vertices.mean(1, keepdim=True)).abs().sum(1)
        best = values.min()
        zeros = [(n - vertices[i].sum().item()) / n for i in torch.nonzero(values <= best + 1e-9).flatten()]
        exact.append((min(zeros), max(zeros)))
    descent = {}
    for start in ("uniform", "trainer"):
        fractions = []
        for t in ts:
            g = torch.Generator().manual_seed(0)
            gamma = torch.rand(1000, generator=g) if start == "uniform" else torch.full((1000,), 0.5)
            gamma.requires_grad_(True)
            for _ in range(2000):
                (grad,) = torch.autograd.grad(polarization(gamma, t), gamma)
                with torch.no_grad():
                    gamma.sub_(1e-3 * grad).clamp_(0.0, 1.0)
            fractions.append((gamma < 1e-6).float().mean().item())
        descent[start] = fractions
    trained = {k: sum(abs(g) < r["threshold_global"] for g in r["gammas"]) / len(r["gammas"])
               for k, r in rows.items() if k.startswith("train/pol") and r.get("threshold_global")}  # fmt: skip
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(ts, predicted, "k-", label="Theorem 3.2: 1 − ρ(t)")
    ax.plot(ts, [sum(e) / 2 for e in exact], "o", mfc="none", label="exact minimum, n = 12")
    ax.plot(ts, descent["uniform"], "s", ms=4, label="descent from U(0, 1)")
    ax.plot(ts, descent["trainer"], "x", label="descent from γ = 0.5 (trainer's init)")
    ax.plot([1.2] * len(trained), list(trained.values()), "r^", label="trained (|γ| < threshold)")
    ax.set_xlabel("t")
    ax.set_ylabel("fraction of γ at 0")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "fidelity_theorem.png", dpi=110)
    lines = ["| t | 1 − ρ(t) | exact, n = 12 | descent from U(0,1) | descent from 0.5 |", "|---|---|---|---|---|"]
    for i, t in enumerate(ts):
        lo, hi = exact[i]
        lines.append(f"| {t} | {predicted[i]:.3f} | {lo:.3f}–{hi:.3f} | {descent['uniform'][i]:.3f} | "
                     f"{descent['trainer'][i]:.3f} |")
    lines.append("")
    lines += [f"- {k} (t = 1.2): fraction of |γ| below its global threshold {v:.3f}" for k, v in sorted(trained.items())]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--posthoc-only", action="store_true", help="measure (c)'s pruned networks, nothing else")
    args = parser.parse_args()
    rows = {r["id"]: r for r in json.loads(OUT.read_text())["rows"]}
    if args.posthoc_only:
        print("\n".join(posthoc(rows, str(Path(args.data_dir).resolve()))))
        return
    px16 = json.loads((RESULTS / "px16.json").read_text())["rows"]
    none = next((r for r in px16 if r["lam"] == 0 and r["seed"] == 0), None)
    sections = [("(a) γ after training (Figure 1), margin number", histograms(rows, none)),
                ("(b) accuracy at equal F", equal_f(rows)),
                ("(c) threshold scope and prunable set: F on px16's γ sets", scopes_on_px16()),
                ("(c) F and accuracy right after pruning, same trained networks",
                 posthoc(rows, str(Path(args.data_dir).resolve()))),
                ("(d) Theorem 3.2: fraction of zeros", theorem(rows))]  # fmt: skip
    for title, lines in sections:
        print(f"\n#### {title}\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
