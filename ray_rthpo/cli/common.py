"""What every ``rthpo`` subcommand shares: CONFIG / ``--set`` / ``--output``, the default output folder,
where a config's own Python code is found, and the one-line progress of an epoch."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ray_rthpo import metrics as M
from ray_rthpo.config import Config


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG, ``--set key=value`` (repeatable) and ``--output DIR``: shared by every subcommand."""
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set lr.eta0=0.05 (repeatable)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="output folder (default: runs/<config name>)")


def default_output(stem: str, *, resume: bool = False) -> Path:
    """``runs/<stem>``; when that holds an earlier run, ``runs/<stem>-2``, ``-3``, ... (never overwritten).

    With ``resume`` the newest existing folder is returned instead.
    """
    base = Path("runs") / stem
    candidates = [base] + [base.with_name(f"{stem}-{i}") for i in range(2, 10_000)]
    existing = [p for p in candidates if p.exists() and any(p.iterdir())]
    if resume:
        return existing[-1] if existing else base
    return next(p for p in candidates if not (p.exists() and any(p.iterdir())))


def user_code_paths(config: Config, config_file: str | Path) -> list[str] | None:
    """The ``train.pythonpath`` a config naming user code (``model.factory``, ``data.factory``,
    ``train.loss``) runs with: its own entries made absolute, then the current directory and the config
    file's folder, so that the command and every Ray trial import the user's modules. None when the
    config names no user code (built-in workloads are left exactly as they were)."""
    from ray_rthpo.factories import resolve_pythonpath, uses_user_code

    if not uses_user_code(config):
        return None
    return resolve_pythonpath(config.train.pythonpath, config_file)


def format_epoch(result: dict[str, Any]) -> str:
    """One progress line for an epoch's metrics."""
    test = result.get(M.TEST_ACC)
    test_txt = f" test/acc {test:.4f}" if isinstance(test, float) and math.isfinite(test) else ""
    flag = "  DIVERGED" if result.get(M.DIVERGED) else ""
    return (f"epoch {result[M.EPOCH]:>3}  train/loss {result[M.TRAIN_LOSS]:.4f}  val/acc "
            f"{result[M.VAL_ACC]:.4f}{test_txt}  lr {result[M.LR]:.5g}  h {result[M.HYPERGRAD]:+.3e}  "
            f"{result[M.EPOCH_SECONDS]:.1f}s{flag}")


__all__ = ["add_common_arguments", "default_output", "user_code_paths", "format_epoch"]
