"""Are pruned models really faster? Measured speed-up over the ideal 1/(1 − F) (issue 12, §4.2).

    python bench/bench_speed.py --quick                       # make bench: F ≈ 0.5, 1 seed, 1 thread
    python bench/bench_speed.py --fractions 0.1 0.3 0.5 0.7 --seeds 2 --threads 1 --runs 9 \\
        --json bench/results/speed.json                       # the table of docs/speed.md
    python bench/bench_speed.py --authors-set ...             # + ours with the authors' prunable set

For each model and target F: γ as a polarized run leaves them (bench/speed_variants.py, one draw
per seed of which channels go), pruned by `pruning.surgery.prune`; beside it the uniform-width
network of equal FLOPs and Torch-Pruning's coupled pruning of the same γ (when installed). Every
network is timed as it is deployed (eval mode, BN folded) on random tensors, dense and variants
interleaved (D O U T D O U T ...) so that a busy machine slows all alike, timed by this process's
CPU time on a CPU (other processes barely touch it). Speed-up: dense ms / variant ms within each
round, the median over rounds (a load that changes between rounds cancels), then over seeds;
ratio = speed-up × (1 − F), which is 1 when time falls with FLOPs. Batch 1 and a throughput batch
(64 at 32², 8 at 224²), `--runs` rounds each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed_variants, when run as a script
import speed_variants as sv  # noqa: E402

from trainers.models import build, input_size  # noqa: E402

MODELS = ["resnet20", "resnet56", "vgg16", "resnet50", "mobilenet_v2"]
VARIANTS = ("ours", "authors", "uniform", "torch_pruning")
NOT_ASKED = "not asked (--authors-set)"


@torch.inference_mode()
def interleaved_times(models: dict[str, torch.nn.Module], x: torch.Tensor, runs: int, clock: str = "cpu",
                      warmup: int = 2) -> dict[str, list[float]]:  # fmt: skip
    """Milliseconds of each model on `x` in each round, the models run in turn within a round.

    `clock` "cpu": this process's CPU time, which other processes on a shared machine barely touch
    (the latency with 1 thread; with more, the work of all of them); "wall": elapsed time (a GPU)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(warmup + runs):
        for name, model in models.items():
            start = now()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(1000 * (now() - start))
    return times


def speedup(dense: list[float], variant: list[float]) -> float:
    """dense / variant within each round, then the median: a load that changes between rounds
    slows both networks of a round alike."""
    return statistics.median(d / v for d, v in zip(dense, variant, strict=True))


def bench_model(name: str, fractions: list[float], seeds: int, threads: list[int], runs: int,
                device: torch.device, clock: str, authors_set: bool = False) -> list[dict]:  # fmt: skip
    """Rows of `_summarize`: dense, ours, uniform width, Torch-Pruning and, with `authors_set`, ours
    with γ near 0 only in the authors' prunable BNs at the same target, all timed in the same rounds."""
    side = input_size(name)
    shape = (3, side, side)
    batches = [1, 64 if side <= 64 else 8]
    dense = build(name, num_classes=10 if side <= 64 else 1000).eval()
    rows = []
    for target in fractions:
        per_seed = []
        for seed in range(seeds):
            small = (3, min(side, 64), min(side, 64))
            model = sv.polarized(dense, target, seed, small)
            variants = {"ours": sv.ours(model, shape)}
            variants["authors"] = (sv.ours(sv.polarized(dense, target, seed, small, prunable_set="authors"), shape)
                                   if authors_set else NOT_ASKED)  # fmt: skip
            f = sv.reduction(dense, variants["ours"], shape)
            if seed == 0:  # one uniform network per F: it does not depend on which channels go
                uniform = sv.uniform(dense, f, small)
            variants["uniform"] = uniform
            tp = sv.torch_pruning(model, shape)
            variants["torch_pruning"] = tp
            f_of = {k: sv.reduction(dense, v, shape) for k, v in variants.items() if not isinstance(v, str)}
            timed = {"dense": sv.deployed(dense), **{k: sv.deployed(v) for k, v in variants.items()
                                                    if not isinstance(v, str)}}  # fmt: skip
            timed = {k: m.to(device) for k, m in timed.items()}
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                for batch in batches:
                    x = torch.randn(batch, *shape, device=device)
                    rounds = interleaved_times(timed, x, runs, clock)
                    ms = {k: statistics.median(t) for k, t in rounds.items()}
                    speedups = {k: speedup(rounds["dense"], t) for k, t in rounds.items() if k != "dense"}
                    per_seed.append({"threads": n_threads, "batch": batch, "seed": seed, "ms": ms, "F": f_of,
                                     "speedup": speedups,
                                     "skipped": {k: v for k, v in variants.items() if isinstance(v, str)}})  # fmt: skip
        for n_threads in threads:
            for batch in batches:
                rows.append(_summarize(name, target, n_threads, batch,
                                       [r for r in per_seed if r["threads"] == n_threads and r["batch"] == batch]))  # fmt: skip
                print(_line(rows[-1]), flush=True)
    return rows


def _summarize(name: str, target: float, threads: int, batch: int, runs: list[dict]) -> dict:
    """Median over seeds of each variant's F, latency, speed-up and ratio to the ideal."""
    row = {"model": name, "target_F": target, "threads": threads, "batch": batch, "seeds": len(runs),
           "dense_ms": statistics.median(r["ms"]["dense"] for r in runs)}  # fmt: skip
    for variant in VARIANTS:
        have = [r for r in runs if variant in r["ms"]]
        if not have:
            row[variant] = {"skipped": runs[0]["skipped"].get(variant, "n/a")}
            continue
        speedups = [r["speedup"][variant] for r in have]
        ideals = [1 / (1 - r["F"][variant]) for r in have]
        row[variant] = {
            "F": statistics.median(r["F"][variant] for r in have),
            "ms": statistics.median(r["ms"][variant] for r in have),
            "speedup": statistics.median(speedups),
            "ideal": statistics.median(ideals),
            "ratio": statistics.median(s / i for s, i in zip(speedups, ideals, strict=True)),
            "speedups": speedups,
        }
    return row


def _line(row: dict) -> str:
    cells = [f"{row['model']:>12} F≈{row['target_F']:.1f} b={row['batch']:<3} t={row['threads']} "
             f"dense {row['dense_ms']:8.2f} ms"]  # fmt: skip
    for variant in _shown([row]):
        v = row[variant]
        cells.append(f"{variant} " + (v["skipped"] if "skipped" in v else
                     f"F={v['F']:.2f} {v['speedup']:.2f}×/{v['ideal']:.2f}× = {v['ratio']:.2f}"))  # fmt: skip
    return " | ".join(cells)


def _shown(rows: list[dict]) -> list[str]:
    """The variants the rows hold, or that were asked for and skipped (with the reason)."""
    return [v for v in VARIANTS if any(r[v].get("skipped") != NOT_ASKED for r in rows)]


def markdown(rows: list[dict]) -> str:
    """The table of docs/speed.md: speed-up / ideal (ratio) per variant."""
    shown = _shown(rows)
    titles = {"ours": "ours: speed-up / ideal (ratio)", "authors": "ours, authors' prunable set",
              "uniform": "uniform width", "torch_pruning": "Torch-Pruning"}  # fmt: skip
    head = ("| model | F (ours) | batch | threads | dense ms | " + " | ".join(titles[v] for v in shown) + " |\n"
            + "|---" * (5 + len(shown)) + "|\n")  # fmt: skip
    lines = []
    for r in rows:
        cells = []
        for variant in shown:
            v = r[variant]
            cells.append(v["skipped"] if "skipped" in v else
                         f"F {v['F']:.2f}: {v['speedup']:.2f}× / {v['ideal']:.2f}× ({v['ratio']:.2f})")  # fmt: skip
        lines.append(f"| {r['model']} | {r['ours'].get('F', float('nan')):.2f} | {r['batch']} | {r['threads']} "
                     f"| {r['dense_ms']:.2f} | " + " | ".join(cells) + " |")  # fmt: skip
    return head + "\n".join(lines) + "\n"


def environment() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    try:
        import torch_pruning

        tp_version = torch_pruning.__version__
    except ImportError:
        tp_version = None
    try:
        import torchvision

        tv_version = torchvision.__version__
    except ImportError:
        tv_version = None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""  # fmt: skip
    return {"machine": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
                        "load_average": os.getloadavg(),
                        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": tv_version, "torch_pruning": tp_version},
            "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "pruning", "bench"))}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="F ≈ 0.5, one seed, one thread, few runs")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=["cpu", "wall"], help="default: cpu on a CPU, wall on a GPU")
    parser.add_argument("--authors-set", action="store_true",
                        help="also time ours with γ near 0 only in the authors' prunable BNs (pruning.prunable)")
    parser.add_argument("--json", type=Path, help="write the results here (with machine, versions, commit)")
    args = parser.parse_args(argv)
    if args.quick:
        args.fractions, args.seeds, args.threads, args.runs = [0.5], 1, [1], min(args.runs, 7)
    device = torch.device(args.device)
    clock = args.clock or ("wall" if device.type == "cuda" else "cpu")
    env = environment()
    if env["versions"]["torch_pruning"] is None:
        print("Torch-Pruning is not installed: its column is skipped (pip install -e '.[bench]')")
    rows = []
    for name in args.models:
        rows += bench_model(name, args.fractions, args.seeds, args.threads, args.runs, device, clock, args.authors_set)
    env["load_average_after"] = os.getloadavg()
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({**env, "clock": clock, "args": sys.argv[1:], "rows": rows}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
