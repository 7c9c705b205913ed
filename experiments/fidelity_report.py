"""Issue 11's tables and figures from experiments/results/fidelity.json (run experiments/fidelity.py first).

    python experiments/fidelity_report.py --data-dir ../shared/data/cifar10

Every number over seeds is mean ± sample std with n, the number of seeds that finished.
(a) the γ histograms after training (the paper's Figure 1, every seed's γ pooled) and the margin
number, the fraction of |γ| in (0.05, 0.15); (b) accuracy after pruning and fine-tuned at equal F
per method, and polarization's paired differences (same seed) against L1 and uniform width; (c) per-layer vs global
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
from fidelity import L1, OUT, POLARIZED, PRESET, RESULTS, TRAIN, _write

POSTHOC = RESULTS / "fidelity_posthoc.json"  # its own file: fidelity.py may be writing OUT meanwhile

MARGIN = (0.05, 0.15)


def mean_std(values: list[float], signed: bool = False) -> str:
    """Mean ± sample standard deviation over seeds, with n."""
    sign = "+" if signed else ""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:{sign}.3f} (n=1)"
    return f"{statistics.mean(values):{sign}.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def seeds_of(group: list[dict[str, Any]]) -> str:
    return ", ".join(str(r["seed"]) for r in sorted(group, key=lambda r: r["seed"])) or "—"


def named(kind: str) -> str:
    """A trained network's name in the tables: regularizer and λ."""
    lam = TRAIN[kind][1]
    name = {"pol": "polarization", "l1": "L1"}[kind.split("_")[0]]
    return f"{name} λ {lam:.0e}".replace("e-0", "e-") + (" (authors' set)" if kind.endswith("_authors") else "")


def margin(gammas: list[float]) -> float:
    return sum(MARGIN[0] < abs(g) < MARGIN[1] for g in gammas) / len(gammas)


def histograms(rows: dict[str, dict[str, Any]], none: dict[str, Any] | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("no regularizer (px16 λ = 0, seed 0)", [none] if none else [])]
    panels += [(named(kind), [r for k, r in rows.items() if k.startswith(f"train/{kind}/")])
               for kind in (L1, *POLARIZED)]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), sharey=False)
    lines = ["| regularizer | fraction of \\|γ\\| in (0.05, 0.15) | fraction of \\|γ\\| < 0.01 | seeds |",
             "|---|---|---|---|"]
    for ax, (title, group) in zip(axes, panels, strict=True):
        values = [abs(g) for r in group for g in r["gammas"]]
        if values:
            ax.hist(values, bins=[i / 100 for i in range(int(max(1.0, max(values)) * 100) + 2)])
        ax.axvspan(*MARGIN, color="orange", alpha=0.2)
        ax.set_title(f"{title}, {len(group)} seed(s)", fontsize=9)
        ax.set_xlabel("|γ|")
        lines.append(f"| {title} | {mean_std([margin(r['gammas']) for r in group])} | "
                     f"{mean_std([sum(abs(g) < 0.01 for g in r['gammas']) / len(r['gammas']) for r in group])} | "
                     f"{seeds_of(group)} |")
    fig.tight_layout()
    fig.savefig(RESULTS / "fidelity_gammas.png", dpi=110)
    return lines


def equal_f(rows: dict[str, dict[str, Any]]) -> list[str]:
    from trainers.baselines import uniform_width

    lines = ["| point | method | F | acc. after pruning | acc. fine-tuned | seeds |", "|---|---|---|---|---|---|"]
    diffs = ["", "| point | fine-tuned: polarization − L1 | polarization − uniform | after pruning: polarization − L1 "
             "| polarization − uniform |", "|---|---|---|---|---|"]  # fmt: skip
    for pol in POLARIZED:
        groups = {method: {r["seed"]: r for k, r in rows.items() if k.startswith(prefix)}
                  for method, prefix in (("polarization", f"ft/{pol}/"), ("L1", f"ft/{L1}@{pol}/"),
                                         ("uniform", f"uniform@{pol}/"))}  # fmt: skip
        widths = [uniform_width("resnet20", 10, (3, 16, 16), r["config"]["baseline_flops"])
                  for r in groups["uniform"].values()]  # fmt: skip
        names = {"polarization": named(pol), "L1": f"{named(L1)} + percentile (NS)",
                 "uniform": "uniform width w " + "/".join(f"{w:.2f}" for w in widths)}  # fmt: skip
        point = f"F ≈ {statistics.mean(r['F'] for r in groups['polarization'].values()):.2f}" if groups[
            "polarization"] else named(pol)  # fmt: skip
        for method, group in groups.items():
            values = list(group.values())
            lines.append(f"| {point} | {names[method]} | {mean_std([r['F'] for r in values])} | "
                         f"{mean_std([r['acc_pruned'] for r in values])} | "
                         f"{mean_std([r['acc_finetuned'] for r in values])} | {seeds_of(values)} |")  # fmt: skip
        paired = {(other, key): [groups["polarization"][seed][key] - groups[other][seed][key]
                                 for seed in groups["polarization"] if seed in groups[other]]
                  for other in ("L1", "uniform") for key in ("acc_finetuned", "acc_pruned")}  # fmt: skip
        diffs.append(f"| {point} | " + " | ".join(mean_std(paired[other, key], signed=True)
                     for key in ("acc_finetuned", "acc_pruned") for other in ("L1", "uniform")) + " |")  # fmt: skip
    trained = ["", "| trained network | acc. before pruning | F (global threshold) | seeds |", "|---|---|---|---|"]
    for kind in (*POLARIZED, L1, "pol_lam7e-4_authors"):
        group = [r for k, r in rows.items() if k.startswith(f"train/{kind}/")]
        f = mean_std([r["F_global"] for r in group]) if kind != L1 else "(percentile: matched)"
        trained.append(f"| {named(kind)} | {mean_std([r['acc_trained'] for r in group])} | {f} | {seeds_of(group)} |")
    return lines + diffs + trained


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
                if not ("_authors/" in k and name == "all")]  # fmt: skip
    done = {r["id"]: r for r in json.loads(POSTHOC.read_text())["rows"]} if POSTHOC.is_file() else {}
    todo = [v for v in variants if f"posthoc/{v[0]}/{v[1]}/{v[2]}" not in done]
    if todo:
        _measure_posthoc(rows, done, todo, data_dir)
    rows = {**rows, **done}
    lines = ["| trained | threshold | pruned set | F | acc. after pruning |", "|---|---|---|---|---|"]
    for kind in (*POLARIZED, "pol_lam7e-4_authors"):
        for scope, name in itertools.product(("global", "per_layer"), ("all", "authors")):
            group = [r for k, r in rows.items() if k.startswith("posthoc/train/" + kind + "/")
                     and k.endswith(f"/{scope}/{name}")]  # fmt: skip
            if group:
                lines.append(f"| {named(kind)} | {scope} | {name} | {mean_std([r['F'] for r in group])} | "
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
    for kind in (*POLARIZED, "pol_lam7e-4_authors"):
        values = [v for k, v in trained.items() if k.startswith(f"train/{kind}/")]
        lines.append(f"- {named(kind)} (t = 1.2): fraction of |γ| below its global threshold {mean_std(values)}")
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
