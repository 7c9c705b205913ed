"""Why 2 data-parallel workers drift from 1 in float32 on ResNet-20, and not in float64 (issue 16).

    python bench/ddp_drift.py [--preset cpu-quick] [--steps 15] [--out FILE] [--raw FILE]

Every run is the real trial setup (`trainers.trial.start_model`, the preset's optimizer, schedule
and λ·R(γ; t) with the clamp, λ = 1e-3) through `trainers.loop.train` for `--steps` steps of real
CIFAR-10, one torch thread per process, the state recorded after every step. Each run is compared
with the plain single-process run of the same dtype, lr, regularizer and activation:

- ddp:      2 gloo processes (torch.multiprocessing; the launch is not what is measured) with the
            same global batch - DDP's all-reduced gradients and the global-batch BN;
- permuted: 1 process, every batch in reverse order - the same mathematics, the sums in another
            order: a rounding perturbation and nothing else;
- ulp:      1 process, one weight of the first conv nudged by one ulp before the first step;
- repeat:   the plain run again (it must be identical: every difference above is the perturbation's).

In float32 and float64 at the preset's lr; in float32 also at lr 1e-3, without the regularizer,
and without the regularizer with SiLU in place of ResNet-20's ReLU (a network with no kink).
Written per comparison: max |Δ| over every float tensor of the state (weights, γ, β, running
statistics) after each step (`max_abs_diff[k]`: after k steps); the first step's max |Δ| per kind
of tensor, of the state and of the gradient; `relu_flips[k]`: ReLU units on in one run and off in
the other in the forward pass of step k + 1 (DDP: over rank 0's half of the batch only);
`gammas_across_mean_or_clamp[k]`: γ on different sides of γ̄ (the kink of Eq. 2) / of the clamp.
The findings: docs/cluster.md, "Data-parallel trials".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULT = Path(__file__).resolve().parent / "results" / "ddp-drift.json"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
LAM, T = 1e-3, 1.2  # the cpu-quick regime's λ (docs/cpu-regime.md: F ≈ 0.6 at t = 1.2)


def _runs(lr: float) -> list[dict]:
    """The runs (kind, dtype, lr, regularizer, activation); the plain ones are the references."""
    rows = []
    for dtype in ("float32", "float64"):
        for kind in ("plain", "repeat", "ddp", "permuted", "ulp"):
            rows.append({"kind": kind, "dtype": dtype, "lr": lr, "regularizer": "polarization"})
    for kind in ("plain", "ddp", "permuted"):
        rows.append({"kind": kind, "dtype": "float32", "lr": 1e-3, "regularizer": "polarization"})
        rows.append({"kind": kind, "dtype": "float32", "lr": lr, "regularizer": "none"})
        rows.append({"kind": kind, "dtype": "float32", "lr": lr, "regularizer": "none", "activation": "silu"})
    return rows


def _label(run: dict) -> str:
    return f"{run['kind']}-{run['dtype']}-lr{run['lr']:g}-{run['regularizer']}-{run.get('activation', 'relu')}"


class _Gates:
    """ResNet-20's F.relu, recording which units are on (x > 0) in every training forward pass;
    with `smooth`, SiLU in its place (a network without the ReLU's kink, the control)."""

    def __init__(self, smooth: bool) -> None:
        import torch.nn.functional as F

        from trainers.models import cifar_resnet

        self.module, self.functional, self.smooth = cifar_resnet, cifar_resnet.F, smooth
        self.steps: list[list[tuple[torch.Size, bytes]]] = []
        shim = type(sys)("F_with_recorded_relu")
        shim.__dict__.update({k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
        shim.relu = self.relu
        cifar_resnet.F = shim

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth:
            return self.functional.silu(x)
        if torch.is_grad_enabled():
            import numpy as np

            self.steps[-1].append((x.shape, np.packbits((x > 0).numpy().reshape(-1)).tobytes()))
        return self.functional.relu(x)

    def close(self) -> None:
        self.module.F = self.functional


class _Recorder:
    """The training loader, cut after `steps` batches, cast to `dtype`, recording the model's state
    after every step (before the next batch is handed out, and when the loop asks for more)."""

    def __init__(self, loader, state: dict[str, torch.Tensor], steps: int, dtype: torch.dtype, reverse: bool) -> None:
        self.loader, self.state, self.steps, self.dtype, self.reverse = loader, state, steps, dtype, reverse
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.first_grads: dict[str, torch.Tensor] = {}
        self.gates: _Gates | None = None

    def __len__(self) -> int:
        return len(self.loader)  # the schedule's steps per epoch stay the real ones

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def _snap(self) -> None:
        if self.gates is not None:
            self.gates.steps.append([])
        self.snapshots.append({k: v.detach().double().clone() for k, v in self.state.items() if v.is_floating_point()})
        if len(self.snapshots) == 2:
            self.first_grads = {k: v.grad.double().clone() for k, v in self.state.items()
                                if isinstance(v, torch.nn.Parameter) and v.grad is not None}  # fmt: skip

    def __iter__(self):
        self._snap()
        for i, (x, y) in enumerate(self.loader):
            if i == self.steps:
                break
            if i:
                self._snap()
            if self.reverse:
                x, y = x.flip(0), y.flip(0)
            yield x.to(self.dtype), y
        self._snap()


def trajectory(run: dict, steps: int, preset: str) -> dict:
    """One run's recorded states (steps + 1 of them), first-step gradients and the γ's names."""
    from trainers import distributed, loop
    from trainers.config import load_config
    from trainers.trial import load_splits, start_model

    torch.set_num_threads(1)
    overrides = {"data_dir": str(DATA), "lr": run["lr"], "regularizer": run["regularizer"]}
    config = load_config(preset, overrides)
    splits = load_splits(config, torch.device("cpu"))
    model, gammas = start_model(config, splits, torch.device("cpu"))
    gates = _Gates(run.get("activation") == "silu")  # after start_model's trace of the model
    dtype = getattr(torch, run["dtype"])
    model.to(dtype)  # the same Parameter objects: `gammas` stay valid
    if run["kind"] == "ulp":
        with torch.no_grad():
            w = next(model.parameters()).view(-1)
            w[0] = torch.nextafter(w[0], torch.tensor(math.inf, dtype=dtype))
    loader = distributed.shard(splits.train)
    state = model.state_dict(keep_vars=True)
    recorder = _Recorder(loader, state, steps, dtype, run["kind"] == "permuted")
    recorder.gates = gates
    optimizer = loop.make_optimizer(model, config, gammas=gammas)
    scheduler = loop.make_scheduler(optimizer, config.lr_schedule, config.epochs, len(loader), config.lr_milestones,
                                    config.lr_decay)  # fmt: skip
    penalty = loop.make_penalty(config, LAM, T, len(loader))
    try:
        loop.train(model, recorder, optimizer, scheduler, epochs=1, penalty=penalty, gammas=gammas)
    finally:
        gates.close()
    names = {id(v): k for k, v in state.items()}
    polarized = {id(g) for g in gammas}
    kinds = {}
    for prefix, module in model.named_modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                kind = "gamma" if id(tensor) in polarized else {"weight": "gamma (not polarized)", "bias": "beta"}.get(name, name)
            else:
                kind = type(module).__name__.lower()
            kinds[f"{prefix}.{name}" if prefix else name] = kind
    return {"states": recorder.snapshots, "grads": recorder.first_grads, "gammas": [names[id(g)] for g in gammas],
            "kinds": kinds, "gates": gates.steps[:-1]}


def _ddp_worker(rank: int, port: int, runs: list[dict], steps: int, preset: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = {_label(run): trajectory(run, steps, preset) for run in runs}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def ddp_trajectories(runs: list[dict], steps: int, preset: str) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ddp.pt")
        mp.spawn(_ddp_worker, args=(port, runs, steps, preset, out), nprocs=2)
        return torch.load(out)


def _unpack(shape: torch.Size, bits: bytes) -> torch.Tensor:
    import numpy as np

    count = math.prod(shape)
    return torch.from_numpy(np.unpackbits(np.frombuffer(bits, dtype=np.uint8))[:count].copy()).view(shape)


def _flips(ours: tuple, theirs: tuple, kind: str) -> int:
    """ReLU units on in one run and off in the other, for the same images (a DDP rank 0 holds the
    first half of the global batch; the permuted run holds it reversed)."""
    a, b = _unpack(*ours), _unpack(*theirs)
    if kind == "permuted":
        a = a.flip(0)
    return (a != b[: len(a)]).sum().item()


def compare(run: dict, ref: dict, how: str) -> dict:
    """Per step: max |Δ| over the state, over the γ, and the γ on different sides of γ̄ / the clamp."""
    curve, gamma_curve, flips = [], [], []
    names = ref["gammas"]
    for a, b in zip(run["states"], ref["states"], strict=True):
        curve.append(max((a[k] - b[k]).abs().max().item() for k in a))
        ga, gb = (torch.cat([s[k] for k in names]) for s in (a, b))
        gamma_curve.append((ga - gb).abs().max().item())
        side = (torch.sign(ga - ga.mean()) != torch.sign(gb - gb.mean())).sum().item()
        clamp = (((ga == 0) != (gb == 0)) | ((ga == 1) != (gb == 1))).sum().item()
        flips.append([side, clamp])
    first = {}
    for k in run["states"][1]:
        kind = ref["kinds"][k]
        d = (run["states"][1][k] - ref["states"][1][k]).abs().max().item()
        first[kind] = max(first.get(kind, 0.0), d)
    grads = {}
    for k in run["grads"]:
        kind = ref["kinds"][k]
        grads[kind] = max(grads.get(kind, 0.0), (run["grads"][k] - ref["grads"][k]).abs().max().item())
    gate_flips = []
    for ours, theirs in zip(run["gates"], ref["gates"], strict=True):
        gate_flips.append(sum(_flips(a, b, how) for a, b in zip(ours, theirs, strict=True)))
    return {"max_abs_diff": curve, "relu_flips": gate_flips, "gamma_max_abs_diff": gamma_curve, "gammas_across_mean_or_clamp": flips,
            "first_step_state": first, "first_step_grad": grads}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-quick")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--raw", type=Path, default=None, help="keep the recorded runs here (reused if present)")
    args = parser.parse_args()
    from trainers.config import load_config

    lr = load_config(args.preset, {}).lr
    runs = _runs(lr)
    results = torch.load(args.raw) if args.raw is not None and args.raw.is_file() else {}
    missing = [r for r in runs if _label(r) not in results]
    results.update({_label(r): trajectory(r, args.steps, args.preset) for r in missing if r["kind"] != "ddp"})
    if any(r["kind"] == "ddp" for r in missing):
        results.update(ddp_trajectories([r for r in missing if r["kind"] == "ddp"], args.steps, args.preset))
    if args.raw is not None and missing:
        torch.save(results, args.raw)
    rows = {}
    for run in runs:
        if run["kind"] == "plain":
            continue
        label = _label(run)
        rows[label] = compare(results[label], results[_label({**run, "kind": "plain"})], run["kind"])
        curve = " ".join(f"{d:.0e}" for d in rows[label]["max_abs_diff"][1:])
        print(f"{label:40s} {curve}")
    for label, row in rows.items():
        print(label, "first step, state:", {k: f"{v:.1e}" for k, v in row["first_step_state"].items()},
              "grad:", {k: f"{v:.1e}" for k, v in row["first_step_grad"].items()},
              "γ sides (mean, clamp):", row["gammas_across_mean_or_clamp"][1:], "relu flips:", row["relu_flips"])  # fmt: skip
    summary = {"preset": args.preset, "steps": args.steps, "lam": LAM, "t": T, "threads_per_process": 1, "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
