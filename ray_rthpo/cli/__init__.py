"""The ``rthpo`` command line.

    rthpo train configs/digits.yaml                 # one training run, no Ray
    rthpo compare configs/compare_digits.yaml       # strategies at equal compute, through Ray Tune
    rthpo run configs/compare_digits.yaml --strategy rthpo
    rthpo table1 --workload mlp_mnist

Errors in the user's input print one line (``rthpo: error: ...``) and exit with status 2. Each
subcommand lives in its own module (``train``, ``experiments``); Ray is imported only when a
subcommand that needs it runs.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import sys
from collections.abc import Callable, Sequence

from ray_rthpo.errors import RTHPOError

Command = Callable[[argparse.Namespace], int]
#: Modules of the extra ``tune`` (pyproject.toml) that the command line needs; ``pip install ray_rthpo``
#: alone installs the optimizer (torch only), without them.
HARNESS_MODULES = ("yaml", "ray", "optuna", "skopt", "sklearn", "torchvision", "pandas", "matplotlib")


def missing_harness() -> list[str]:
    """The modules of :data:`HARNESS_MODULES` that are not installed (empty when the extra ``tune`` is)."""
    return [name for name in HARNESS_MODULES if importlib.util.find_spec(name) is None]


def commands() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Command]]:
    """Subcommand name -> (help, add_arguments, run)."""
    from ray_rthpo.cli import experiments, train

    return {
        "train": ("one training run (no Ray)", train.add_arguments, train.run),
        "table1": ("the paper's Table 1 for one workload (all rows, through Ray Tune)",
                   experiments.add_table1_arguments, experiments.run_table1_command),
        "run": ("one strategy as one Ray Tune experiment (searcher + budget)", experiments.add_run_arguments,
                experiments.run_command),
        "compare": ("several strategies under the same compute budget, with tables and plots",
                    experiments.add_compare_arguments, experiments.compare_command),
    }


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="rthpo", description="RT-HPO learning-rate tuning with Ray Tune")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in commands().items():
        add_arguments(sub.add_parser(name, help=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rthpo`` console script; returns the exit status."""
    missing = missing_harness()
    if missing:
        print(f"rthpo: error: the rthpo command runs the comparison harness, which is not installed here "
              f"(missing: {', '.join(missing)}); install it with pip install 'ray_rthpo[tune]' (from a "
              "checkout: pip install -e '.[tune]'). The optimizer alone needs only torch: "
              "from ray_rthpo import RTHPO.", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return commands()[args.command][2](args)
    except RTHPOError as err:
        print(f"rthpo: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write outside the atomic writers: a full disk, a read-only or forbidden folder
        if err.errno not in _DISK_ERRNOS:
            raise
        from ray_rthpo.report.files import write_error

        print(f"rthpo: error: {write_error(err.filename or '(a file)', err)}", file=sys.stderr)
        return 2


#: OSErrors that are the user's disk or folder, not a bug: answered with one line and the fix.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


__all__ = ["HARNESS_MODULES", "build_parser", "commands", "main", "missing_harness"]
