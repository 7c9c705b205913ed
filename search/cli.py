"""polarsearch: parse, validate, call one function.

    polarsearch --target-flops 0.5 --delta 0.05 --preset cpu-quick --data-dir DIR   # a search
    polarsearch --resume --output outputs/search-...                                # continue it
    polarsearch trial --preset smoke --lam 0.01 --t 1.2 --data-dir DIR [--json]     # one trial, no Ray
    polarsearch final --preset smoke --lam 0.01 --t 1.2 --data-dir DIR              # the final job, no Ray
    polarsearch compare [--experiment E] [--mlflow-uri U] [--format table|csv|json|markdown] [--searches]

Every input is checked before anything starts or is written (`search.inputs`): a bad one gives one
line `polarsearch: error: ...` on stderr and exit status 2. Ctrl-C gives exit status 130 (an
interrupted search is resumed with --resume). With --fail-on-miss a search whose winner is not
within δ of the target (or that has no winner) exits with status 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from search.inputs import CONFIG_FLAGS, SETTINGS_FLAGS, UsageError

PROG = "polarsearch"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """The `polarsearch` command; returns the exit status."""
    from search import compare
    from search.local import final_command, trial_command

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"search": (search_parser, search_command), "trial": (trial_parser, trial_command),
                "final": (final_parser, final_command), "compare": (lambda: compare.parser(_Parser), compare_command)}  # fmt: skip
    make_parser, command = commands[argv.pop(0) if argv and argv[0] in ("trial", "final", "compare") else "search"]
    try:
        try:
            args = make_parser().parse_args(argv)
        except SystemExit as done:  # --help
            return int(done.code or 0)
        return command(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def compare_command(args: argparse.Namespace) -> int:
    """`polarsearch compare`: a store or search that is not there is a usage error (one line, exit 2)."""
    from search.compare import CompareError, command

    try:
        return command(args)
    except CompareError as error:
        raise UsageError(str(error)) from None


def search_command(args: argparse.Namespace) -> int:
    """A search (or its continuation): the table at the end; 130 when interrupted, 1 when the final job failed."""
    from search.inputs import search_spec
    from search.ray_cluster import ResourceError
    from search.report import summary
    from search.service import SearchFailed, run_search

    spec = search_spec(args)
    settings = spec.settings
    _quiet_libraries(settings.strategy)
    print(f"{PROG}: {'resuming' if args.resume else 'searching'} F*={settings.target} δ={settings.delta} "
          f"with {settings.strategy}; output {spec.output}", flush=True)
    try:
        outcome = run_search(spec, resume=args.resume, echo=lambda line: print(line, flush=True))
    except ResourceError as error:  # known once Ray is up, before anything is written
        raise UsageError(str(error)) from None
    except ConnectionError as error:  # a Ray cluster that went away between the check and ray.init
        raise UsageError(f"cannot connect to Ray: {(str(error).splitlines() or [''])[0]}") from None
    except SearchFailed as error:  # a full disk, an I/O error: the parent run is FAILED with the reason
        print(f"{PROG}: error: the search failed: {error}", file=sys.stderr)
        return 1
    print(summary(outcome, settings.target, settings.delta))
    if outcome.interrupted:
        print(f"{PROG}: interrupted; continue with: {PROG} --resume --output {spec.output}", file=sys.stderr)
        return 130
    if outcome.final_error:
        print(f"{PROG}: error: the final job failed: {outcome.final_error}", file=sys.stderr)
        return 1
    best = outcome.best
    if args.fail_on_miss and (best is None or abs(best.flops_reduction - settings.target) > settings.delta):
        print(f"{PROG}: the target F*={settings.target} ± {settings.delta} was missed (--fail-on-miss)", file=sys.stderr)
        return 3
    return 0


def _quiet_libraries(strategy: str) -> None:
    """Keep the console to the search's own lines: MLflow's schema set-up and Ray's token notice (the
    dashboard line says where the token is) are not news to the person watching."""
    import logging

    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "ray._private.authentication.authentication_token_setup"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if strategy == "optuna":  # "A new study created in RDB ..."; Optuna sets its logger's level itself
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def search_parser() -> argparse.ArgumentParser:
    from search.settings import SearchSettings

    p = _Parser(prog=PROG, description="Search (λ, t) of polarization pruning for a target FLOPs reduction.",
                epilog=f"subcommands: {PROG} trial --help, {PROG} final --help, {PROG} compare --help")
    p.add_argument("--target-flops", type=float, help="target FLOPs reduction F*, in (0, 1)")
    hints = typing.get_type_hints(SearchSettings)
    defaults = {f.name: f.default for f in dataclasses.fields(SearchSettings)}
    for name, text in SETTINGS_FLAGS.items():
        _typed_flag(p, name, f"{text} (default {defaults[name]})", hints[name])
    p.add_argument("--ray-address", help="join this Ray cluster (its GCS, host:port) instead of starting a local Ray")
    p.add_argument("--gpus-per-trial", type=float, help="default: 1 if the cluster has GPUs, else 0")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite:///mlflow.db, in this folder)")
    p.add_argument("--experiment", help="MLflow experiment name (default polarsearch)")
    p.add_argument("--skip-final", action="store_true", help="stop after the search, without the final job")
    p.add_argument("--fail-on-miss", action="store_true",
                   help="exit with status 3 when no trial is within δ of the target (default: 0 either way)")
    p.add_argument("--resume", action="store_true", help="continue the search saved in --output (default: newest)")
    p.add_argument("--output", type=Path, help="output folder (default outputs/search-<time>)")
    _config_arguments(p)
    return p


def trial_parser() -> argparse.ArgumentParser:
    p = _local_parser("trial", "One polarized trial, locally, without Ray.", "model.pt and trial.pt")
    p.add_argument("--json", action="store_true", help="one JSON object per epoch on stdout, nothing else")
    return p


def final_parser() -> argparse.ArgumentParser:
    return _local_parser("final", "The final job (train, prune, fine-tune), locally.", "the exports")


def _local_parser(command: str, description: str, files: str) -> argparse.ArgumentParser:
    """The parser of a command run in this process at a given (λ, t): `trial` or `final`."""
    p = _Parser(prog=f"{PROG} {command}", description=description)
    p.add_argument("--lam", type=float, required=True, help="λ, the weight of the polarization regularizer")
    p.add_argument("--t", type=float, required=True, help="t of the polarization regularizer (Eq. 2)")
    p.add_argument("--output", type=Path, help=f"folder for {files} (default outputs/{command}-<time>)")
    _config_arguments(p)
    return p


def _config_arguments(p: argparse.ArgumentParser) -> None:
    from trainers.config import Config

    hints = typing.get_type_hints(Config)
    p.add_argument("--preset", help="a preset's name (trainers/presets) or the path of a YAML file")
    p.add_argument("--download", action="store_const", const=True, help="download the dataset if missing")
    group = p.add_argument_group("config overrides (over the preset)")
    for name, text in CONFIG_FLAGS.items():
        _typed_flag(group, name, text, hints[name])


def _typed_flag(p: argparse._ActionsContainer, name: str, text: str, hint: typing.Any) -> None:
    kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    flag = f"--{name.replace('_', '-')}"
    if kind is bool:  # --early-decisions / --no-early-decisions; not given: the preset's or the default
        p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        return
    p.add_argument(flag, dest=name, type=kind, metavar=kind.__name__.upper(), help=text)


if __name__ == "__main__":
    sys.exit(main())
