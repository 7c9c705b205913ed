"""polarsearch: parse, validate, call one function.

    polarsearch --target-flops 0.5 --delta 0.05 --preset cpu-quick --data-dir DIR   # a search
    polarsearch --resume --output outputs/search-...                                # continue it
    polarsearch trial --preset smoke --lam 0.01 --t 1.2 --data-dir DIR [--json]     # one trial, no Ray
    polarsearch final --preset smoke --lam 0.01 --t 1.2 --data-dir DIR              # the final job, no Ray

Every input is checked before anything starts or is written (no Ray, no MLflow store, no output
folder): a bad one gives one line `polarsearch: error: ...` on stderr and exit status 2.
Ctrl-C gives exit status 130 (an interrupted search is resumed with --resume).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.strategies import STRATEGIES

PROG = "polarsearch"
SUBCOMMANDS = ("trial", "final")
# Config fields that have a flag (--max-epochs for max_epochs); the rest are set in a preset YAML.
CONFIG_FLAGS = (
    "model", "dataset", "data_dir", "seed", "device", "subset", "val_size", "downsample", "batch_size", "lr",
    "epochs", "max_epochs", "min_epochs", "patience", "f_tol", "finetune_epochs", "finetune_lr", "lam_low",
    "lam_high", "t_init", "t_step", "max_trials", "lam_warmup_epochs", "gamma_lr", "warm_start_epochs",
    "threads", "cache_dir",
)  # fmt: skip


class UsageError(Exception):
    """An input the user can fix; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """The `polarsearch` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "search"
    try:
        parser = {"search": search_parser, "trial": trial_parser, "final": final_parser}[command]()
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help
            return int(done.code or 0)
        return {"search": _search, "trial": _trial, "final": _final}[command](args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------------
# Parsers


def search_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Search (λ, t) of polarization pruning for a target FLOPs reduction.",
                epilog=f"subcommands: {PROG} trial --help, {PROG} final --help")
    p.add_argument("--target-flops", type=float, help="target FLOPs reduction F*, in (0, 1)")
    p.add_argument("--delta", type=float, default=0.05, help="permissible range δ: stop when |F - F*| <= δ")
    p.add_argument("--strategy", default="algorithm1", help=f"one of {', '.join(STRATEGIES)}")
    p.add_argument("--parallel", type=int, default=1, help="trials at once (kary's k, optuna's batch)")
    p.add_argument("--ray-address", help="join this Ray cluster (its GCS, host:port) instead of starting a local Ray")
    p.add_argument("--gpus-per-trial", type=float, help="default: 1 if the cluster has GPUs, else 0")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite:///mlflow.db, in this folder)")
    p.add_argument("--experiment", help="MLflow experiment name (default polarsearch)")
    p.add_argument("--skip-final", action="store_true", help="stop after the search, without the final job")
    p.add_argument("--resume", action="store_true", help="continue the search saved in --output (default: newest)")
    p.add_argument("--output", type=Path, help="output folder (default outputs/search-<time>)")
    _config_arguments(p)
    return p


def trial_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} trial", description="One polarized trial, locally, without Ray.")
    _lam_t_arguments(p)
    p.add_argument("--output", type=Path, help="folder for model.pt and trial.pt (default outputs/trial-<time>)")
    p.add_argument("--json", action="store_true", help="one JSON object per epoch on stdout, nothing else")
    _config_arguments(p)
    return p


def final_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} final", description="The final job (train, prune, fine-tune), locally.")
    _lam_t_arguments(p)
    p.add_argument("--output", type=Path, help="folder for the exports (default outputs/final-<time>)")
    _config_arguments(p)
    return p


def _lam_t_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lam", type=float, required=True, help="λ, the weight of the polarization regularizer")
    p.add_argument("--t", type=float, required=True, help="t of the polarization regularizer (Eq. 2)")


def _config_arguments(p: argparse.ArgumentParser) -> None:
    from trainers.config import Config

    hints = typing.get_type_hints(Config)
    p.add_argument("--preset", help="a preset's name (trainers/presets) or the path of a YAML file")
    p.add_argument("--download", action="store_const", const=True, help="download the dataset if missing")
    group = p.add_argument_group("config overrides (over the preset)")
    for name in CONFIG_FLAGS:
        kind = next(t for t in typing.get_args(hints[name]) or (hints[name],) if t is not type(None))
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, metavar=kind.__name__.upper())


# ---------------------------------------------------------------------------------------------
# Validation: every check before anything starts or is written


def _config(args: argparse.Namespace) -> Any:
    """The Config of the flags over the preset, with its model and data checked."""
    from trainers import data, models
    from trainers.config import ConfigError, load_config

    overrides = {name: getattr(args, name) for name in CONFIG_FLAGS}
    overrides["download"] = args.download
    try:
        config = load_config(args.preset, overrides)
    except ConfigError as error:
        raise UsageError(str(error)) from None
    if config.model not in models.available():
        raise UsageError(f"unknown model {config.model!r} (available: {', '.join(models.available())})")
    if config.data_dir is None:
        raise UsageError(f"no data folder for {config.dataset}: pass --data-dir DIR (with --download to fetch it)")
    try:
        data.check(config.dataset, config.data_dir, config.download)
        if config.download:  # before anything starts: a search must not begin without its data
            data.fetch(config.dataset, config.data_dir)
    except data.DataError as error:
        raise UsageError(str(error)) from None
    return config


def _check_lam_t(lam: float, t: float) -> None:
    if not math.isfinite(lam) or lam < 0:
        raise UsageError(f"--lam must be a number >= 0, got {lam}")
    if not math.isfinite(t):
        raise UsageError(f"--t must be a finite number, got {t}")


def _search_spec(args: argparse.Namespace) -> Any:
    """The SearchSpec of the flags (or of the saved search, with --resume), fully validated."""
    from search.base import check_target
    from search.ray_cluster import RayAddressError, check_ray_address
    from search.service import SearchSpec, read_spec_file
    from search.tracking import DEFAULT_EXPERIMENT, DEFAULT_URI, TrackingError, check_uri

    if args.resume:
        output = args.output or _newest_search(Path("outputs"))
        if not (output / "search.json").is_file():
            raise UsageError(f"--resume: no search saved in {output} (no search.json)")
        saved = read_spec_file(output)
        from trainers.config import Config, ConfigError

        try:
            config = Config(**saved["config"])
        except (ConfigError, TypeError) as error:
            raise UsageError(f"--resume: {output}/search.json: {error}") from None
        spec = SearchSpec(config=config, target=saved["target"], delta=saved["delta"], output=output,
                          strategy=saved["strategy"], preset=saved["preset"], parallel=saved["parallel"],
                          ray_address=args.ray_address, mlflow_uri=saved["mlflow_uri"],
                          experiment=saved["experiment"], gpus_per_trial=args.gpus_per_trial,
                          skip_final=args.skip_final)  # fmt: skip
    else:
        if args.target_flops is None:
            raise UsageError("--target-flops is required (the FLOPs reduction to reach, in (0, 1))")
        try:
            check_target(args.target_flops, args.delta)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if args.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {args.strategy!r} (choose from {', '.join(STRATEGIES)})")
        if args.parallel < 1:
            raise UsageError(f"--parallel must be >= 1, got {args.parallel}")
        output = args.output or Path("outputs") / time.strftime("search-%Y%m%d-%H%M%S")
        if (output / "search.json").exists():
            raise UsageError(f"{output} already holds a search: pass --resume to continue it, or another --output")
        spec = SearchSpec(config=_config(args), target=args.target_flops, delta=args.delta, output=output,
                          strategy=args.strategy, preset=args.preset, parallel=args.parallel,
                          ray_address=args.ray_address, mlflow_uri=args.mlflow_uri or DEFAULT_URI,
                          experiment=DEFAULT_EXPERIMENT if args.experiment is None else args.experiment,
                          gpus_per_trial=args.gpus_per_trial, skip_final=args.skip_final)  # fmt: skip
    if spec.gpus_per_trial is not None and spec.gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial must be >= 0, got {spec.gpus_per_trial}")
    if not spec.experiment:
        raise UsageError("--experiment must not be empty")
    try:
        check_uri(spec.mlflow_uri)
        if spec.ray_address is not None:
            check_ray_address(spec.ray_address)
    except (TrackingError, RayAddressError) as error:
        raise UsageError(str(error)) from None
    return spec


def _newest_search(root: Path) -> Path:
    saved = sorted(root.glob("search-*/search.json"), key=lambda p: p.stat().st_mtime)
    if not saved:
        raise UsageError(f"--resume: no saved search under {root}/ (pass --output DIR)")
    return saved[-1].parent


# ---------------------------------------------------------------------------------------------
# Commands


def _search(args: argparse.Namespace) -> int:
    spec = _search_spec(args)
    from search.ray_cluster import ResourceError
    from search.service import run_search

    print(f"{PROG}: {'resuming' if args.resume else 'searching'} F*={spec.target} δ={spec.delta} "
          f"with {spec.strategy}; output {spec.output}", flush=True)
    try:
        outcome = run_search(spec, resume=args.resume, echo=lambda line: print(line, flush=True))
    except ResourceError as error:  # known once Ray is up, before anything is written
        raise UsageError(str(error)) from None
    except ConnectionError as error:  # a Ray cluster that went away between the check and ray.init
        raise UsageError(f"cannot connect to Ray: {(str(error).splitlines() or [''])[0]}") from None
    print(summary(outcome, spec.target, spec.delta))
    if outcome.interrupted:
        print(f"{PROG}: interrupted; continue with: {PROG} --resume --output {spec.output}", file=sys.stderr)
        return 130
    if outcome.final_error:
        print(f"{PROG}: error: the final job failed: {outcome.final_error}", file=sys.stderr)
        return 1
    return 0


def summary(outcome: Any, target: float, delta: float) -> str:
    """The end-of-search table: trials, winner, stop reason, final model."""
    lines = ["", f"{'#':>3}  {'lam':>10}  {'t':>6}  {'F':>6}  {'epochs':>6}  {'accuracy':>8}  status"]
    for i, row in enumerate(outcome.trials, 1):
        lines.append(f"{i:>3}  {row['lam']:>10.4g}  {row['t']:>6.3g}  {_fmt(row['flops_reduction'])}  "
                     f"{_fmt(row['epochs'], '6.0f')}  {_fmt(row['val_accuracy'], '8.3f')}  {row['status']}")
    if outcome.best is None:
        lines.append("winner: none (no trial succeeded)")
    else:
        lam, t, f = outcome.best
        inside = "inside" if abs(f - target) <= delta else "outside"
        lines.append(f"winner: lam={lam:.6g} t={t:.4g} F={f:.3f} (|F-F*|={abs(f - target):.3f}, {inside} δ={delta})")
    lines.append(f"stop reason: {outcome.reason}")
    if outcome.final is not None:
        final = outcome.final
        lines.append(
            f"final model: accuracy {final.acc_after_finetune:.3f} (before pruning {final.acc_before_pruning:.3f}, "
            f"after pruning {final.acc_after_pruning:.3f}); FLOPs {final.flops_before:,} -> {final.flops_after:,} "
            f"(F={final.flops_reduction:.3f}); params {final.params_before:,} -> {final.params_after:,}")
        lines.append(f"final model saved at {final.model_path}")
    lines.extend(outcome.notes)
    lines.append(f"search took {outcome.seconds:.0f} s; results in {outcome.output}")
    return "\n".join(lines)


def _fmt(value: Any, spec: str = "6.3f") -> str:
    width = int(spec.split(".")[0] or 0)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'-':>{width}}"
    return f"{value:{spec}}"


def _trial(args: argparse.Namespace) -> int:
    out = sys.stdout  # with --json it carries the JSON lines only: anything else printed goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        _check_lam_t(args.lam, args.t)
        config = _config(args)
        output = args.output or Path("outputs") / time.strftime("trial-%Y%m%d-%H%M%S")
        import torch

        from trainers.trial import run_trial

        def report(metrics: dict[str, Any]) -> None:
            row = {k: _json_number(metrics.get(k)) for k in ("epoch", "flops_reduction", "threshold",
                                                              "val_accuracy", "loss")}  # fmt: skip
            if args.json:
                out.write(json.dumps(row) + "\n")
            else:
                out.write(f"epoch {row['epoch']}: F={_fmt(row['flops_reduction'], '.3f')} "
                          f"threshold={_fmt(row['threshold'], '.3f')} accuracy={_fmt(row['val_accuracy'], '.3f')} "
                          f"loss={_fmt(row['loss'], '.4f')}\n")
            out.flush()

        output.mkdir(parents=True, exist_ok=True)
        result = run_trial(config, args.lam, args.t, report=report, checkpoint_dir=output)
        line = (f"trial {result.status}: F={_fmt(result.flops_reduction, '.3f')} after {result.epochs} epochs"
                f"{'; ' + result.message if result.message else ''}")
        if result.model_state is None:
            print(f"{line}; no model saved")
            return 1
        torch.save(result.model_state, output / "model.pt")
        print(f"{line}; model state dict at {output / 'model.pt'}")
        return 0


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _final(args: argparse.Namespace) -> int:
    _check_lam_t(args.lam, args.t)
    config = _config(args)
    output = args.output or Path("outputs") / time.strftime("final-%Y%m%d-%H%M%S")
    from trainers.final import run_final

    def report(stats: dict[str, Any]) -> None:
        print(f"{stats.get('phase')} epoch {stats.get('epoch')}: loss {_fmt(stats.get('loss'), '.4f')}", flush=True)

    result = run_final(config, args.lam, args.t, output, report=report)
    print(f"accuracy: before pruning {result.acc_before_pruning:.3f}, after pruning {result.acc_after_pruning:.3f}, "
          f"after fine-tuning {result.acc_after_finetune:.3f}")
    print(f"FLOPs: {result.flops_before:,} -> {result.flops_after:,} (reduction {result.flops_reduction:.3f}); "
          f"params {result.params_before:,} -> {result.params_after:,}")
    latency = ", ".join(f"batch {b}: {result.latency_ms_before[b]:.2f} -> {ms:.2f} ms"
                        for b, ms in result.latency_ms_after.items())
    print(f"latency: {latency}")
    print(f"pruned model: {result.model_path} (torch.export; see trainers/final.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
