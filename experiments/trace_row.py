"""Step by step: what RT-HPO did in one run of a row of an experiment (a suite cell's, for instance).

    python experiments/trace_row.py configs/suite/mnist_lenet.yaml rthpo_sgd_hi --epochs 1 --out trace.csv

runs the row's configuration (the experiment's base with the row's overrides, its first seed) through the
Trainer in this process, without Ray, and writes one CSV line per optimizer step: the training loss, the
learning rate the step used, the tuned scale s after it, the last hypergradient, how many loss-spike
backoffs have fired, and the norms of the tangent (dw/ds) and of the weights. It prints the epochs' metrics
and, at the end, the steps where something changed fast (a backoff, or the weight norm growing by more than
a quarter in ten steps): where a run from too high a start dies, the trace shows how. ``--set KEY=VALUE``
overrides the run config (``lr.backoff=null``, ``train.seed=1``).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_rthpo.config import parse_override  # noqa: E402
from ray_rthpo.errors import ConfigError  # noqa: E402
from ray_rthpo.experiment.config import load_experiment  # noqa: E402
from ray_rthpo.optim import RTHPO  # noqa: E402
from ray_rthpo.optim.rthpo import GLOBAL  # noqa: E402
from ray_rthpo.training.trainer import Trainer  # noqa: E402

#: The CSV's columns, in order.
COLUMNS = ("step", "loss", "eta", "scale", "hypergrad", "backoffs", "tangent_norm", "weight_norm")


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    """The Euclidean norm of the tensors taken as one vector (float64)."""
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def trace_row(config_path: str, row: str, epochs: int, overrides: Sequence[str] = ()) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]]]:
    """Run ``row`` of the experiment at ``config_path`` for ``epochs`` epochs (``overrides``: ``KEY=VALUE``
    on the run config); returns ``(steps, epochs)``: one dict per optimizer step (:data:`COLUMNS`) and the
    Trainer's per-epoch results."""
    exp = load_experiment(config_path, [f"base.train.epochs={epochs}"])
    try:
        strategy = exp.strategy(row)
    except ConfigError as err:
        raise SystemExit(f"trace_row: {config_path}: {err}") from None
    config = exp.run_config(strategy)
    if overrides:
        config = config.replace(**dict(parse_override(text) for text in overrides))
    trainer = Trainer(config)
    optimizer = trainer.optimizer
    if not isinstance(optimizer, RTHPO):
        raise SystemExit(f"trace_row: row {row!r} is lr.method {config.lr.method}, not a hypergradient "
                         "method; its optimizer has no scale or tangent to trace.")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    steps: list[dict[str, Any]] = []
    inner_step = optimizer.step

    def step(*args: Any, **kwargs: Any) -> Any:
        loss = inner_step(*args, **kwargs)
        info, state = optimizer.last_step, optimizer.state.get(GLOBAL, {})
        tangents = [optimizer.state[p]["z"] for p in params if "z" in optimizer.state[p]]
        steps.append({"step": len(steps), "loss": float(info.loss) if info is not None else math.nan,
                      "eta": info.eta if info is not None else math.nan, "scale": optimizer.scale,
                      "hypergrad": state.get("last_hypergrad"), "backoffs": int(state.get("backoffs", 0)),
                      "tangent_norm": _norm(tangents), "weight_norm": _norm(params)})
        return loss

    optimizer.step = step  # type: ignore[method-assign]
    results = []
    while not trainer.done:
        results.append(trainer.run_epoch())
    return steps, results


def fast_changes(steps: Sequence[dict[str, Any]], window: int = 10, growth: float = 1.25) -> list[str]:
    """Lines naming the steps where a backoff fired or the weight norm grew by more than ``growth`` over
    ``window`` steps (the first of each run of such steps)."""
    lines, growing = [], False
    for i, s in enumerate(steps):
        if i and s["backoffs"] > steps[i - 1]["backoffs"]:
            lines.append(f"step {s['step']}: backoff (loss {s['loss']:.3g}); scale now {s['scale']:.3g}")
        now = i >= window and s["weight_norm"] > growth * steps[i - window]["weight_norm"]
        if now and not growing:
            before = steps[i - window]["weight_norm"]
            lines.append(f"step {s['step']}: weight norm {before:.3g} -> {s['weight_norm']:.3g} in {window} "
                         f"steps (loss {s['loss']:.3g}, eta {s['eta']:.3g})")
        growing = now
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="an experiment YAML (configs/suite/*.yaml)")
    parser.add_argument("row", help="the strategy (row) to run, e.g. rthpo_sgd_hi")
    parser.add_argument("--epochs", type=int, default=1, help="epochs to run (default 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the run config (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, but got {args.epochs}")
    torch.set_num_threads(1)
    start = time.perf_counter()
    steps, results = trace_row(args.config, args.row, args.epochs, args.overrides)
    for r in results:
        print(f"epoch {r['epoch']}: val/acc {r['val/acc']:.4f}, test/acc {r.get('test/acc', math.nan):.4f}, "
              f"lr {r['lr']:.4g}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(steps)
    for line in fast_changes(steps):
        print(line)
    print(f"{len(steps)} steps in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
