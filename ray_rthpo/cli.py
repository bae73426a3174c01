"""The ``rthpo`` command line.

    rthpo train configs/digits.yaml                 # one training run, no Ray
    rthpo train configs/mnist_mlp.yaml --set lr.beta=1.0e-4 --output runs/mlp

Errors in the user's input print one line (``rthpo: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ray_rthpo import metrics as M
from ray_rthpo.errors import RTHPOError

Command = Callable[[argparse.Namespace], int]
#: Subcommands: name -> (add_arguments, run). Other modules register theirs with :func:`register`.
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Command]] = {}


def register(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Command) -> None:
    """Register a subcommand ``rthpo NAME``."""
    _COMMANDS[name] = (help_text, add_arguments, run)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG, ``--set key=value`` (repeatable) and ``--output DIR``: shared by every subcommand."""
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set lr.beta=1.0e-4 (repeatable)")
    parser.add_argument("--output", default=None, metavar="DIR", help="output folder (default: runs/<config name>)")


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


def format_epoch(result: dict[str, Any]) -> str:
    """One progress line for an epoch's metrics."""
    test = result.get(M.TEST_ACC)
    test_txt = f" test/acc {test:.4f}" if isinstance(test, float) and math.isfinite(test) else ""
    flag = "  DIVERGED" if result.get(M.DIVERGED) else ""
    return (f"epoch {result[M.EPOCH]:>3}  train/loss {result[M.TRAIN_LOSS]:.4f}  val/acc {result[M.VAL_ACC]:.4f}"
            f"{test_txt}  lr {result[M.LR]:.5g}  h {result[M.HYPERGRAD]:+.3e}  {result[M.EPOCH_SECONDS]:.1f}s{flag}")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in the output folder")


def _train(args: argparse.Namespace) -> int:
    from ray_rthpo.config import load_config, save_config
    from ray_rthpo.results_io import atomic_write_text, write_history_csv
    from ray_rthpo.trainer import Trainer

    config = load_config(args.config, args.overrides)
    out = Path(args.output) if args.output else default_output(Path(args.config).stem, resume=args.resume)
    checkpoint = out / "checkpoint.pt"
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise RTHPOError(f"output folder {str(out)!r} already holds a run; pass --resume to continue it, "
                         "or choose another --output.")
    if args.resume and not checkpoint.is_file():
        raise RTHPOError(f"--resume: no checkpoint at {str(checkpoint)!r}; run without --resume to start afresh.")
    print(f"rthpo train: {config.lr.method} on {config.data.name}/{config.model.name}, "
          f"{config.train.epochs} epochs -> {out}", flush=True)
    trainer = Trainer(config)  # loads the data: a missing or corrupt file fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    if args.resume:
        trainer.load(checkpoint)
        print(f"resumed at epoch {trainer.epoch}", flush=True)
    print(f"device {trainer.device}, {len(trainer.data.train)} train / {len(trainer.data.val)} val / "
          f"{len(trainer.data.test)} test examples, {trainer.steps_per_epoch} steps per epoch", flush=True)
    try:
        while not trainer.done:
            result = trainer.run_epoch()
            print(format_epoch(result), flush=True)
            trainer.save(checkpoint)
            write_history_csv(trainer.history, out / "history.csv")
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last finished epoch is saved. Continue with: rthpo train {args.config} "
              f"--output {out} --resume", file=sys.stderr)
        return 130
    final = trainer.history[-1]
    atomic_write_text(out / "result.json", json.dumps(final, indent=2))
    test = final.get(M.TEST_ACC)
    test_txt = f", test accuracy {test:.4f}" if isinstance(test, float) else ""
    print(f"{trainer.status}: validation accuracy {final[M.VAL_ACC]:.4f}{test_txt}, final lr {final[M.LR]:.5g}, "
          f"{final[M.TOTAL_SECONDS]:.1f}s compute", flush=True)
    return 0


register("train", "one training run (no Ray)", _train_arguments, _train)


def _load_plugins() -> None:
    """Import the modules that register more subcommands (the Ray adapter), if they exist."""
    try:
        import ray_rthpo.tune.commands  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name not in ("ray_rthpo.tune.commands", "ray_rthpo.tune"):
            raise


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    _load_plugins()
    parser = argparse.ArgumentParser(prog="rthpo", description="RT-HPO learning-rate tuning with Ray Tune")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rthpo`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command][2](args)
    except RTHPOError as err:
        print(f"rthpo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Plugins register into ray_rthpo.cli, a different module object than this __main__: run that one.
    from ray_rthpo.cli import main as _main

    raise SystemExit(_main())
