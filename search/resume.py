"""`--resume`: the saved search (`search.json`) read back whole, and the flags given beside
`--resume` held against it.

A resumed search is the same search: every saved setting comes back (the trainer's Config, the
search settings, the MLflow store and experiment, the Ray address, the GPU share, `--skip-final`).
A flag given with `--resume` that says otherwise is refused rather than silently ignored or
silently obeyed (half a search under one setting and half under another is neither).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from search.outcome import SPEC_FILE, SearchSpec


class ResumeError(ValueError):
    """The saved search cannot be resumed as asked; the message is one line."""


def saved_spec(output: Path, args: argparse.Namespace) -> SearchSpec:
    """The SearchSpec saved in `output`; ResumeError when it is missing, damaged or contradicted."""
    from search.settings import SearchSettings
    from trainers.config import Config

    path = output / SPEC_FILE
    if not path.is_file():
        raise ResumeError(f"no search saved in {output} (no {SPEC_FILE})")
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
        if not isinstance(saved.get("parent_run_id"), str) or not saved["parent_run_id"]:
            raise ValueError("no parent_run_id")
        spec = SearchSpec(config=Config(**saved["config"]), settings=SearchSettings(**saved["settings"]),
                          output=output, preset=saved.get("preset"), ray_address=saved.get("ray_address"),
                          mlflow_uri=saved["mlflow_uri"], experiment=saved["experiment"],
                          gpus_per_trial=saved.get("gpus_per_trial"), skip_final=bool(saved.get("skip_final")))  # fmt: skip
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise ResumeError(f"{path} is damaged ({reason}); start a new search with another --output") from None
    conflicts = contradictions(spec, args)
    if conflicts:
        raise ResumeError(f"{'; '.join(conflicts[:3])} (a resumed search keeps its saved settings: "
                          "drop the flag, or start a new search with another --output)")  # fmt: skip
    return spec


def contradictions(spec: SearchSpec, args: argparse.Namespace) -> list[str]:
    """'--flag X but the saved search has Y' for every flag given that disagrees with `spec`."""
    from search.inputs import CONFIG_FLAGS, SETTINGS_FLAGS
    from search.tracking import absolute_uri

    pairs: list[tuple[str, Any, Any]] = [
        ("preset", args.preset, spec.preset),
        ("target_flops", args.target_flops, spec.settings.target),
        *((name, getattr(args, name, None), getattr(spec.settings, name)) for name in SETTINGS_FLAGS),
        *((name, getattr(args, name, None), getattr(spec.config, name)) for name in CONFIG_FLAGS),
        ("mlflow_uri", args.mlflow_uri and absolute_uri(args.mlflow_uri), spec.mlflow_uri),
        ("experiment", args.experiment, spec.experiment),
        ("ray_address", args.ray_address, spec.ray_address),
        ("gpus_per_trial", args.gpus_per_trial, spec.gpus_per_trial),
        ("skip_final", args.skip_final or None, spec.skip_final),  # store_true: False is "not given"
    ]
    return [f"--{name.replace('_', '-')} {given} but the saved search has {saved}"
            for name, given, saved in pairs if given is not None and not _same(name, given, saved)]  # fmt: skip


def _same(name: str, given: Any, saved: Any) -> bool:
    if name in ("data_dir", "cache_dir") and saved is not None:
        return Path(str(given)).expanduser().resolve() == Path(str(saved)).expanduser().resolve()
    if isinstance(given, int | float) and isinstance(saved, int | float) and not isinstance(given, bool):
        return math.isclose(float(given), float(saved), rel_tol=1e-12, abs_tol=0.0)
    return given == saved
