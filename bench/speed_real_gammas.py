"""Is the speed bench's γ model what real polarized training leaves? (issue 12)

bench_speed.py sets γ as a polarized run leaves them (speed_variants.polarized: a random share of
each channel space near 0). This script takes networks that real trials trained (their Tune
checkpoints, `OUT/<search>/ray/tune/trial_*/checkpoint_*/trial.pt`), prunes each at the threshold
its trial chose (trainers.pruning_rule, the preset's rule), and times it beside the dense network,
the bench's random-γ network of the same F and the uniform-width one, interleaved in the same
rounds (CPU time, 1 thread, batch 1 and 64 at 32×32; ratio = speed-up × (1 − F)).

    .venv/bin/python bench/speed_real_gammas.py RUNS/*/ray/tune/trial_*/checkpoint_*/trial.pt \
        --preset cpu-quick --json bench/results/speed_real_gammas.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import speed_variants as sv  # noqa: E402
from bench_speed import environment, interleaved_times, speedup  # noqa: E402

from pruning.prunable import polarized_bns  # noqa: E402
from trainers.config import load_config  # noqa: E402
from trainers.models import build  # noqa: E402
from trainers.pruning_rule import pruning_threshold  # noqa: E402

SHAPE = (3, 32, 32)
BATCHES = (1, 64)


def trained(path: Path, config) -> tuple[torch.nn.Module, object] | None:
    """The trial's network from its checkpoint and the threshold its rule picks (None: no valley)."""
    model = build(config.model, config.num_classes or 10)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["model"])
    model.eval()
    threshold = pruning_threshold(polarized_bns(model, config.prunable_set), config)
    return None if threshold is None else (model, threshold)


def measure(path: Path, config, runs: int) -> dict | None:
    found = trained(path, config)
    if found is None:
        return None
    model, threshold = found
    dense = build(config.model, config.num_classes or 10).eval()
    networks = {"real": sv.prune(model, threshold, SHAPE).eval()}
    f = sv.reduction(dense, networks["real"], SHAPE)
    networks["random"] = sv.ours(sv.polarized(dense, f, 0, SHAPE), SHAPE)
    networks["uniform"] = sv.uniform(dense, f, SHAPE)
    flops = {k: sv.reduction(dense, m, SHAPE) for k, m in networks.items()}
    timed = {"dense": sv.deployed(dense), **{k: sv.deployed(m) for k, m in networks.items()}}
    row = {"checkpoint": str(path), "F": flops}
    for batch in BATCHES:
        rounds = interleaved_times(timed, torch.randn(batch, *SHAPE), runs)
        row[f"ratio_b{batch}"] = {k: speedup(rounds["dense"], rounds[k]) * (1 - flops[k]) for k in networks}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--preset", default="cpu-quick", help="the preset the trials ran with (model, threshold rule)")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.preset)
    rows = []
    for path in sorted(args.checkpoints):
        row = measure(path, config, args.runs)
        if row is None:
            print(f"{path}: no threshold (no valley in the γ histogram), skipped")
            continue
        rows.append(row)
        print(f"F {row['F']['real']:.3f}  " + "  ".join(
            f"b{b}: real {row[f'ratio_b{b}']['real']:.2f} random {row[f'ratio_b{b}']['random']:.2f} "
            f"uniform {row[f'ratio_b{b}']['uniform']:.2f}" for b in BATCHES), flush=True)  # fmt: skip
    for b in BATCHES:
        gaps = [r[f"ratio_b{b}"]["real"] - r[f"ratio_b{b}"]["random"] for r in rows]
        print(f"batch {b}: real − random ratio, median {statistics.median(gaps):+.3f}, "
              f"range {min(gaps):+.3f} … {max(gaps):+.3f} over {len(rows)} networks")
    if args.json:
        args.json.write_text(json.dumps({**environment(), "preset": args.preset, "runs": args.runs,
                                         "rows": rows}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
