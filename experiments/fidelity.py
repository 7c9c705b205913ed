"""Issue 11: the paper's claim checked against L1 (Network Slimming) and uniform width, on cpu-quick.

Every network is trained by the project's own loop (`trainers.loop.train`, from `start_model`) on
the preset's data and recipe at its full budget (cpu-quick: exactly 30 epochs, min = max = epochs),
then pruned by `trainers.pruning_rule.choose` and fine-tuned `finetune_epochs` (10), as the final
job does; a uniform-width network is trained 30 + 10 epochs the same way, never pruned. Per seed:

- train: `pol_lam7e-4` / `pol_lam2e-3` (polarization, t 1.2; px16.json at this budget: F ≈ 0.54 /
  0.70), `l1_lam2e-3` (L1 on γ, one training per seed); `none` comes from px16.json;
- fine-tune at equal F: each polarized network as pruned (global threshold, all BNs), L1 at the
  percentile that gives the same seed's polarized F, uniform at the width that gives it;
- then, once every seed's equal-F runs are done: `pol_lam7e-4_authors` (λ 7e-4 over the authors'
  prunable set) for (c); (c)'s per-layer vs global and authors vs all, F and accuracy right after
  pruning, are measured on the cached trained networks by experiments/fidelity_report.py.

Rows (config, seed, commit, numbers, |γ| after training) go to experiments/results/fidelity.json;
a run already there is skipped, so an interrupted run continues where it stopped. Trained weights
are cached under $POLARSEARCH_CACHE/fidelity (or ~/.cache/polarsearch/fidelity). Figures, tables
and the Theorem 3.2 check: experiments/fidelity_report.py.

    python experiments/fidelity.py --data-dir ../shared/data/cifar10 --jobs 2 [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "fidelity.json"
PRESET = "cpu-quick"
# λ at t = 1.2 from px16.json (cpu-quick, 30 epochs): 7e-4 gave F 0.54 / 0.54 / 0.55 (seeds 0 / 1 / 2),
# 2e-3 gave 0.70 / 0.73 / 0.69 — the F ≈ 0.5 and ≈ 0.7 points. L1's λ is not tuned: it equals the
# larger polarization λ (Network Slimming's percentile threshold sets F, not λ).
LAM_50, LAM_70, LAM_L1, T = 7e-4, 2e-3, 2e-3, 1.2
# The unregularized network of Figure 1 is px16's λ = 0 reference (cpu-quick, seed 0, 30 epochs: the
# same recipe), its γ recorded there; None would train it here.
NONE_FROM: str | None = "px16.json"
TRAIN = {  # kind: Config overrides and λ
    "none": ({"regularizer": "none"}, 0.0),
    "l1_lam2e-3": ({"regularizer": "l1"}, LAM_L1),
    "pol_lam7e-4": ({}, LAM_50),
    "pol_lam2e-3": ({}, LAM_70),
    "pol_lam7e-4_authors": ({"prunable_set": "authors"}, LAM_50),
}
POLARIZED = ("pol_lam7e-4", "pol_lam2e-3")  # the equal-F points, F ≈ 0.5 and ≈ 0.7
L1 = "l1_lam2e-3"


def jobs(seeds: list[int]) -> list[dict[str, Any]]:
    """Every run, in the order they start: seed by seed the equal-F comparison (b), then the authors'
    prunable set for (c) on every seed, with the runs each one needs."""
    out = []
    for seed in seeds:
        trained = {k: f"train/{k}/s{seed}" for k in TRAIN}
        out += [{"id": trained[k], "kind": "train", "train": k, "seed": seed, "needs": []}
                for k in (*POLARIZED, L1)]  # fmt: skip
        for pol in POLARIZED:
            out.append({"id": f"ft/{pol}/s{seed}", "kind": "finetune", "train": pol, "seed": seed,
                        "overrides": {}, "needs": [trained[pol]]})  # fmt: skip
            out.append({"id": f"ft/{L1}@{pol}/s{seed}", "kind": "finetune", "train": L1, "seed": seed,
                        "overrides": {"baseline": "slimming", "regularizer": "l1"}, "match": trained[pol],
                        "needs": [trained[L1], trained[pol]]})  # fmt: skip
            out.append({"id": f"uniform@{pol}/s{seed}", "kind": "uniform", "seed": seed, "match": trained[pol],
                        "needs": [trained[pol]]})  # fmt: skip
        if seed == seeds[0] and NONE_FROM is None:
            out.append({"id": trained["none"], "kind": "train", "train": "none", "seed": seed, "needs": []})
    out += [{"id": f"train/pol_lam7e-4_authors/s{seed}", "kind": "train", "train": "pol_lam7e-4_authors",
             "seed": seed, "needs": []} for seed in seeds]  # fmt: skip
    return out


def run(job: dict[str, Any], data_dir: str, matched_f: float | None, preset: str = PRESET,
        lam_scale: float = 1.0) -> dict[str, Any]:
    """One run in a worker process (one thread); its row."""
    import torch

    from pruning.prunable import prunable_bns
    from trainers import loop
    from trainers.config import cache_root, load_config
    from trainers.pruning_rule import choose, reference_flops
    from trainers.trial import load_splits, start_model

    torch.set_num_threads(1)
    start = time.time()
    epochs = load_config(preset).epochs  # the preset's full budget, every run exactly that long
    base = {"data_dir": data_dir, "seed": job["seed"], "threads": 1, "min_epochs": epochs, "max_epochs": epochs}
    if job["kind"] == "uniform":
        overrides, lam = {"regularizer": "none", "baseline": "uniform", "baseline_flops": round(matched_f, 4)}, 0.0
    else:
        overrides, lam = dict(TRAIN[job["train"]][0]), TRAIN[job["train"]][1] * lam_scale
    config = load_config(preset, {**base, **overrides})
    cpu = torch.device("cpu")
    splits = load_splits(config, cpu)
    steps, shape = len(splits.train), tuple(splits.input_shape)
    cache = cache_root(config) / "fidelity" / f"{job['id'].replace('/', '_').split('@')[0]}.pt"
    model, gammas = start_model(config, splits, cpu)
    train_id = f"train/{job.get('train')}/s{job['seed']}"
    if job["kind"] == "finetune":
        model.load_state_dict(torch.load(cache_root(config) / "fidelity" / f"{train_id.replace('/', '_')}.pt"))
    else:
        optimizer = loop.make_optimizer(model, config, gammas=gammas)
        scheduler = loop.make_scheduler(optimizer, config.lr_schedule, config.epochs, steps, config.lr_milestones,
                                        config.lr_decay)  # fmt: skip
        loop.train(model, splits.train, optimizer, scheduler, epochs=config.epochs, gammas=gammas,
                   penalty=loop.make_penalty(config, lam, T, steps), on_epoch_end=_progress(job))  # fmt: skip
        if job["kind"] == "train":
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), cache)
    acc_trained, _ = loop.evaluate(model, splits.test)
    row: dict[str, Any] = {"id": job["id"], "kind": job["kind"], "seed": job["seed"], "lam": lam, "t": T,
                           "acc_trained": acc_trained}  # fmt: skip
    if job["kind"] == "train":
        bns = prunable_bns(model, config.prunable_set)
        row["gammas"] = [round(float(v), 5) for bn in prunable_bns(model) for v in bn.weight.detach().abs()]
        full = reference_flops(config, model, shape, splits.num_classes)
        if job["train"].startswith("pol"):  # (c): F and accuracy right after pruning, both scopes
            for scope in ("global", "per_layer"):
                scoped = dataclasses.replace(config, threshold_scope=scope)
                choice = choose(model, bns, scoped, shape, full)
                row[f"F_{scope}"] = choice.flops_reduction
                row[f"threshold_{scope}"] = choice.summary
        row["config"] = config.to_dict()
    else:
        if job["kind"] == "finetune":
            config = load_config(preset, {**base, **overrides, **job["overrides"],
                                          "baseline_flops": round(matched_f, 4) if matched_f is not None else 0.5})  # fmt: skip
        pruned, row["F"], row["threshold"] = _prune(model, config, shape, splits.num_classes)
        row["acc_pruned"], _ = loop.evaluate(pruned, splits.test)
        optimizer = loop.make_optimizer(pruned, config, lr=config.finetune_lr, gamma_lr=config.finetune_lr)
        scheduler = loop.make_scheduler(optimizer, config.finetune_schedule or config.lr_schedule,
                                        config.finetune_epochs, steps, config.lr_milestones, config.lr_decay)
        loop.train(pruned, splits.train, optimizer, scheduler, epochs=config.finetune_epochs)
        row["acc_finetuned"], _ = loop.evaluate(pruned, splits.test)
        row["config"] = config.to_dict()
    row["seconds"] = round(time.time() - start, 1)
    return row


def _progress(job: dict[str, Any]) -> Any:
    def on_epoch_end(epoch: int, stats: dict[str, Any]) -> bool:
        print(f"  {job['id']} epoch {stats['epoch']} loss {stats['loss']:.3f}", flush=True)
        return False
    return on_epoch_end


def _prune(model: Any, config: Any, shape: tuple[int, ...], num_classes: int) -> tuple[Any, float, float | None]:
    import copy

    from pruning.flops import count_flops
    from pruning.prunable import prunable_bns
    from pruning.surgery import prune
    from trainers.pruning_rule import choose, reference_flops

    full = reference_flops(config, model, shape, num_classes)
    choice = choose(model, prunable_bns(model, config.prunable_set), config, shape, full)
    pruned = prune(model, choice.threshold, shape) if choice.threshold is not None else copy.deepcopy(model)
    return pruned, 1.0 - count_flops(pruned, shape) / full, choice.summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--preset", default=PRESET, help="smoke: check the pipeline in minutes")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--lam-scale", type=float, default=1.0,
                        help="every λ times this (smoke: 20, its λ range is 20× cpu-quick's)")
    args = parser.parse_args()
    rows = {r["id"]: r for r in json.loads(args.out.read_text())["rows"]} if args.out.is_file() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=RESULTS.parent).stdout.strip()  # fmt: skip
    todo = [j for j in jobs(args.seeds) if j["id"] not in rows]
    running: dict[Any, dict[str, Any]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        while todo or running:
            for job in [j for j in todo if all(n in rows for n in j["needs"])][: args.jobs - len(running)]:
                match = rows[job["match"]]["F_global"] if "match" in job else None
                running[pool.submit(run, job, os.path.abspath(args.data_dir), match, args.preset, args.lam_scale)] = job
                todo.remove(job)
            if not running:
                raise SystemExit(f"runs whose inputs failed: {[j['id'] for j in todo]}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    row = {**future.result(), "commit": commit}
                except Exception as error:  # noqa: BLE001 - one failed run is reported, the rest go on
                    print(f"{job['id']} failed: {type(error).__name__}: {error}", flush=True)
                    continue
                rows[row["id"]] = row
                _write(rows, args.out, args.preset)
                print(f"{row['id']}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                      if isinstance(v, float) and k not in ("lam", "t")), flush=True)  # fmt: skip


def _write(rows: dict[str, dict[str, Any]], out: Path, preset: str) -> None:
    partial = out.with_name(f".{out.name}.tmp")
    partial.write_text(json.dumps({"preset": preset, "rows": list(rows.values())}, indent=1) + "\n")
    os.replace(partial, out)


if __name__ == "__main__":
    main()
