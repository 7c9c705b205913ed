"""`polarsearch trial` and `polarsearch final`: one trial or one final job, in this process, without
Ray or MLflow; their files in --output (default outputs/trial-<time>, outputs/final-<time>).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from search.inputs import UsageError, check_data, check_lam_t, config_of
from search.outcome import strict
from search.report import final_lines, fmt


def trial_command(args: argparse.Namespace) -> int:
    """One polarized trial: a line (or, with --json, a JSON object) per epoch; model.pt at the end."""
    out = sys.stdout  # with --json it carries the JSON lines only: anything else printed goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        check_lam_t(args.lam, args.t)
        config = config_of(args)
        output = args.output or Path("outputs") / time.strftime("trial-%Y%m%d-%H%M%S")
        check_here(config, output)
        import torch

        from trainers.data import DataError
        from trainers.trial import REPORTED, run_trial

        def report(metrics: dict[str, Any]) -> None:
            row = {k: strict(metrics.get(k)) for k in REPORTED}
            if args.json:
                out.write(json.dumps(row) + "\n")
            else:
                out.write(f"epoch {row['epoch']}: F={fmt(row['flops_reduction'], '.3f')} "
                          f"threshold={fmt(row['threshold'], '.3f')} accuracy={fmt(row['val_accuracy'], '.3f')} "
                          f"loss={fmt(row['loss'], '.4f')}\n")
            out.flush()

        output.mkdir(parents=True, exist_ok=True)
        try:
            result = run_trial(config, args.lam, args.t, report=report, checkpoint_dir=output)
        except (DataError, OSError) as error:
            return job_error(error)
        line = (f"trial {result.status}: F={fmt(result.flops_reduction, '.3f')} after {result.epochs} epochs"
                f"{'; ' + result.message if result.message else ''}")
        if result.model_state is None:
            print(f"{line}; no model saved")
            return 1
        torch.save(result.model_state, output / "model.pt")
        print(f"{line}; model state dict at {output / 'model.pt'}")
        return 0


def final_command(args: argparse.Namespace) -> int:
    """The final job: train, prune, fine-tune, export; its numbers printed, final.json in --output."""
    check_lam_t(args.lam, args.t)
    config = config_of(args)
    output = args.output or Path("outputs") / time.strftime("final-%Y%m%d-%H%M%S")
    check_here(config, output)
    from trainers.data import DataError
    from trainers.final import run_final

    def report(stats: dict[str, Any]) -> None:
        print(f"{stats.get('phase')} epoch {stats.get('epoch')}: loss {fmt(stats.get('loss'), '.4f')}", flush=True)

    try:
        result = run_final(config, args.lam, args.t, output, report=report)
    except (DataError, OSError) as error:
        return job_error(error)
    print("\n".join(final_lines(result)))
    latency = ", ".join(f"batch {b}: {result.latency_ms_before[b]:.2f} -> {ms:.2f} ms"
                        for b, ms in result.latency_ms_after.items())  # fmt: skip
    print(f"latency: {latency}")
    return 0


def job_error(error: Exception) -> int:
    """One line for what stopped a job midway: a damaged image met in a streamed tree (exit 2, bad
    input; DataLoader workers wrap it, its last line is the error) or a full disk / I/O error (exit 1)."""
    from trainers.data import DataError

    last = (str(error).strip().splitlines() or [""])[-1].split("DataError: ", 1)[-1]
    bad_input = isinstance(error, DataError)
    print(f"polarsearch: error: {last if bad_input else f'{type(error).__name__}: {last}'}", file=sys.stderr)
    return 2 if bad_input else 1


def check_here(config: Any, output: Path) -> None:
    """What a job in this process needs besides its Config: its device, a writable output, its data."""
    from search.preflight import PreflightError, check_device, check_output

    try:
        check_device(config.device)
        check_output(output)
    except PreflightError as error:
        raise UsageError(str(error)) from None
    check_data(config)
