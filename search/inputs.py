"""Every input of a command checked before anything starts or is written (no Ray, no MLflow store,
no output folder): the flags become a trainer `Config`, the search's `SearchSettings` and a
`SearchSpec`, or one `UsageError` line for the user.

Precedence: defaults < the preset (its fields; its `search:` section) < the flags. With `--resume`
the saved search (`search.json`) gives the settings, the Config and the MLflow store.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from search.outcome import SPEC_FILE, SearchSpec

# Config fields that have a flag (--max-epochs for max_epochs), with their one line of help; the
# rest are set in a preset YAML.
CONFIG_FLAGS = {
    "model": "the network (trainers/models registry)",
    "dataset": "cifar10, cifar100 or imagenet",
    "data_dir": "the dataset's folder (torchvision's CIFAR files or an ImageFolder tree)",
    "seed": "the seed of the model, the data split and the strategy",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "subset": "train on a stratified subset of this many images",
    "val_size": "hold out this many training images for the trial's accuracy (0: the test split)",
    "downsample": "average-pool the images by this factor (2: CIFAR at 16x16)",
    "batch_size": "training batch size",
    "lr": "initial learning rate (SGD with momentum)",
    "epochs": "epochs of the final job's polarized training",
    "max_epochs": "a trial's epoch budget",
    "min_epochs": "a trial runs at least this many epochs",
    "patience": "F is stable when it moved <= f_tol over this many epochs",
    "f_tol": "F is stable when it moved by at most this much",
    "finetune_epochs": "epochs of fine-tuning of the pruned network",
    "finetune_lr": "learning rate of the fine-tuning",
    "lam_warmup_epochs": "λ ramps in linearly over this many epochs",
    "gamma_lr": "a learning rate of its own for the scaling factors γ",
    "warm_start_epochs": "start every trial from an unregularized baseline trained this many epochs (cached)",
    "threads": "torch CPU threads per process",
    "cache_dir": "cache of decoded datasets and baselines (default $POLARSEARCH_CACHE or ~/.cache/polarsearch)",
    "threshold_scope": "global: one γ histogram for the network; per_layer: one per BN layer (the authors')",
    "prunable_set": "all: every prunable BN; authors: the BNs the authors' code polarizes and prunes",
    "regularizer": "the sparsity term on γ: polarization, l1 (Network Slimming) or none",
    "baseline": "none (the paper's method), slimming (l1, percentile threshold) or uniform (width × w)",
    "baseline_flops": "the FLOPs reduction a slimming or uniform baseline is asked for",
    "workers_per_trial": "data-parallel workers per trial (Ray Train, DDP), each with its share of the trial's CPUs/GPUs",
    "final_workers": "data-parallel workers of the final job (Ray Train, DDP), each with its share of its CPUs/GPUs",
}
# Search settings that have a flag beside --target-flops (the CLI adds each one's default).
SETTINGS_FLAGS = {
    "delta": "permissible range δ: stop when |F - F*| <= δ",
    "strategy": "the search strategy: algorithm1 (the paper's), kary, secant or optuna",
    "parallel": "trials at once, for kary (its k) and optuna (its batch)",
    "lam_low": "λ_l, the low end of the initial λ bracket",
    "lam_high": "λ_u, the high end of the initial λ bracket",
    "t_init": "t₀, the t of the λ phase",
    "t_step": "the step of t in the t phase",
    "max_trials": "the trial budget of the search",
    "early_decisions": "end a trial once the side of the strategy's window is known (docs/search-cost.md)",
    "reuse_trials": "start from the trials earlier searches of the same trainer config ran to a stable F, "
                    "read from the MLflow experiment (algorithm1, secant; docs/search-cost.md)",
}


class UsageError(Exception):
    """An input the user can fix; printed as one line, exit status 2."""


def config_of(args: argparse.Namespace) -> Any:
    """The Config of the flags over the preset, with its model and data checked (and fetched with --download)."""
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


def check_lam_t(lam: float, t: float) -> None:
    """The (λ, t) of `trial` and `final`, checked by the trainers' own rule."""
    from trainers.loop import check_lam_t as check

    try:
        check(lam, t)
    except ValueError as error:
        raise UsageError(str(error)) from None


def search_spec(args: argparse.Namespace) -> SearchSpec:
    """The SearchSpec of the flags (or of the saved search, with --resume), fully validated: the
    cheap checks first, the data's contents (every image decoded once, then cached) last."""
    from search.tracking import DEFAULT_EXPERIMENT, DEFAULT_URI

    if args.resume:
        spec = _saved_spec(args)
    else:
        output = args.output or Path("outputs") / time.strftime("search-%Y%m%d-%H%M%S")
        if (output / SPEC_FILE).exists():
            raise UsageError(f"{output} already holds a search: pass --resume to continue it, or another --output")
        settings = _settings(args)  # before the data: a wrong target is told without touching the data
        config = config_of(args)
        spec = SearchSpec(config=config, settings=_with_seed(settings, config.seed), output=output,
                          preset=args.preset, ray_address=args.ray_address, mlflow_uri=args.mlflow_uri or DEFAULT_URI,
                          experiment=DEFAULT_EXPERIMENT if args.experiment is None else args.experiment,
                          gpus_per_trial=args.gpus_per_trial, skip_final=args.skip_final)  # fmt: skip
    _check_where(spec)
    check_data(spec.config)
    return spec


def _settings(args: argparse.Namespace) -> Any:
    from search.settings import SettingsError, settings_from
    from trainers.config import ConfigError, preset_section

    try:
        values = preset_section(args.preset)
    except ConfigError as error:
        raise UsageError(str(error)) from None
    flags = {"target": args.target_flops, **{name: getattr(args, name) for name in SETTINGS_FLAGS}}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return settings_from(values)
    except SettingsError as error:
        raise UsageError(str(error)) from None


def _with_seed(settings: Any, seed: int) -> Any:
    """The strategy draws with the run's seed (--seed), as the trials do."""
    return dataclasses.replace(settings, seed=seed)


def _saved_spec(args: argparse.Namespace) -> SearchSpec:
    """The spec of the search saved in --output (default: the newest under outputs/): every saved
    setting restored; a flag given beside --resume must agree with it."""
    from search.resume import ResumeError, saved_spec

    output = args.output or _newest_search(Path("outputs"))
    try:
        return saved_spec(output, args)
    except ResumeError as error:
        raise UsageError(f"--resume: {error}") from None


def _check_where(spec: SearchSpec) -> None:
    """Where the search runs, logs and writes: the GPU share, the device, the MLflow store, the output
    folder, the Ray cluster (asked as Ray will ask it)."""
    from search.preflight import PreflightError, check_device, check_mlflow, check_output
    from search.ray_cluster import RayAddressError, check_ray_address

    gpus = spec.gpus_per_trial
    if gpus is not None and not (math.isfinite(gpus) and 0 <= gpus <= 1024):
        raise UsageError(f"--gpus-per-trial must be a number in [0, 1024], got {gpus}")
    if not spec.experiment:
        raise UsageError("--experiment must not be empty")
    try:
        if spec.ray_address is None:  # on a cluster the device is the workers', checked once Ray is up
            check_device(spec.config.device)
        check_output(spec.output)
        check_mlflow(spec.mlflow_uri, spec.experiment)
        if spec.ray_address is not None:
            check_ray_address(spec.ray_address)
    except (PreflightError, RayAddressError) as error:
        raise UsageError(str(error)) from None


def check_data(config: Any) -> None:
    """The data's contents, as the trials will read them (`trainers.data.verify`)."""
    from trainers import data

    try:
        data.verify(config.dataset, config.data_dir, subset=config.subset, val_size=config.val_size,
                    downsample=config.downsample, seed=config.seed, cache_dir=config.cache_dir)  # fmt: skip
    except data.DataError as error:
        raise UsageError(str(error)) from None


def _newest_search(root: Path) -> Path:
    saved = sorted(root.glob(f"search-*/{SPEC_FILE}"), key=lambda p: p.stat().st_mtime)
    if not saved:
        raise UsageError(f"--resume: no saved search under {root}/ (pass --output DIR)")
    return saved[-1].parent
