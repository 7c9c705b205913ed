"""Which deployed form makes a pruned network fastest relative to the dense one? (issue 12)

    python bench/speed_forms.py --model resnet56 --batch 1 64

bench_speed.py times every network in one form: eval mode, BN folded, NCHW, eager. This script
times dense, ours and the uniform-width network of the same F (bench/speed_variants.py, one seed)
in other forms, each applied to all three alike, interleaved, 1 thread, CPU time:

- eager: the form of bench_speed.py (`pruning.fold.for_inference`: BN folded, no identity calls,
  residual additions as plain `index_add_`);
- fold_bn_only: BN folded and nothing else (the form before for_inference);
- channels_last: weights and input NHWC (oneDNN convolutions read NHWC without a reorder);
- script: `torch.jit.trace` + `torch.jit.freeze` (no Python per op);
- script_mkldnn: the same + `torch.jit.optimize_for_inference` (oneDNN tensors between ops,
  prepacked weights);
- no_mkldnn: eager with oneDNN off (im2col + GEMM at every batch size).

Printed per form: each network's ms and the ratio speed-up × (1 − F) of ours and uniform.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed_variants as sv  # noqa: E402
from bench_speed import interleaved_times, speedup  # noqa: E402

from pruning.fold import fold_bn  # noqa: E402
from trainers.models import build, input_size  # noqa: E402


class _ChannelsLast(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


class _NoMkldnn(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.backends.mkldnn.flags(enabled=False):
            return self.model(x)


@torch.no_grad()
def _script(model: nn.Module, x: torch.Tensor, mkldnn: bool) -> nn.Module:
    scripted = torch.jit.freeze(torch.jit.trace(model, x).eval())
    return torch.jit.optimize_for_inference(scripted) if mkldnn else scripted


FORMS: dict[str, Callable[[nn.Module, torch.Tensor], nn.Module]] = {  # of an eval-mode network
    "eager": lambda m, x: sv.deployed(m),
    "fold_bn_only": lambda m, x: fold_bn(m),
    "channels_last": lambda m, x: _ChannelsLast(sv.deployed(m)),
    "script": lambda m, x: _script(sv.deployed(m), x, mkldnn=False),
    "script_mkldnn": lambda m, x: _script(sv.deployed(m), x, mkldnn=True),
    "no_mkldnn": lambda m, x: _NoMkldnn(sv.deployed(m)),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    side = input_size(args.model)
    shape, small = (3, side, side), (3, min(side, 64), min(side, 64))
    dense = build(args.model, num_classes=10 if side <= 64 else 1000).eval()
    ours = sv.ours(sv.polarized(dense, args.fraction, 0, small), shape)
    f = sv.reduction(dense, ours, shape)
    networks = {"dense": dense, "ours": ours, "uniform": sv.uniform(dense, f, small)}
    f_of = {"ours": f, "uniform": sv.reduction(dense, networks["uniform"], shape)}
    for batch in args.batch:
        x = torch.randn(batch, *shape)
        timed = {(form, name): FORMS[form](m, x) for form in args.forms for name, m in networks.items()}
        rounds = interleaved_times({f"{k[0]}/{k[1]}": m for k, m in timed.items()}, x, args.runs)
        for form in args.forms:
            ms = {name: statistics.median(rounds[f"{form}/{name}"]) for name in networks}
            ratios = {name: speedup(rounds[f"{form}/dense"], rounds[f"{form}/{name}"]) * (1 - f_of[name])
                      for name in f_of}  # fmt: skip
            print(f"{args.model} F={f:.2f} b={batch:<3} {form:>13}: "
                  + " ".join(f"{n} {v:7.2f} ms" for n, v in ms.items())
                  + f" | ratio ours {ratios['ours']:.2f} uniform {ratios['uniform']:.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
