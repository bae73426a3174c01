"""Tiny, fast experiments for the Ray Tune tests (digits, a 32-unit MLP, a couple of epochs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: A run config that trains in well under a second per epoch on one CPU core.
TINY_BASE: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 64, "val_batch_size": 64},
    "model": {"name": "mlp", "hidden": [32]},
    "lr": {"method": "exp_decay", "eta0": 0.3, "gamma": 0.9},
    "train": {"epochs": 2, "seed": 0},
}
ETA_SPACE: dict[str, Any] = {"lr.eta0": {"loguniform": [1.0e-2, 1.0]}, "lr.gamma": {"uniform": [0.5, 1.0]}}


def tiny_experiment(*strategies: dict[str, Any], **top: Any) -> dict[str, Any]:
    """An experiment mapping over TINY_BASE: a large budget, 2 trials at once, the given strategies."""
    return {"name": "tiny", "base": TINY_BASE, "budget_s": 1000.0, "max_concurrent": 2, "seed": 0,
            "strategies": list(strategies), **top}


def train_fn_failing_once(config: dict[str, Any], fail: Callable[[], None]) -> None:
    """The real ``train_fn``, which calls ``fail()`` right after reporting epoch 2 (its checkpoint included),
    the first time only: ``config["test.marker"]`` is a file that records it."""
    from pathlib import Path

    from ray import tune

    from ray_rthpo.tune import trainable

    config = dict(config)
    marker = Path(config.pop("test.marker"))
    real_report = tune.report
    calls: list[int] = []

    def report(metrics: dict[str, Any], checkpoint: Any = None) -> None:
        real_report(metrics, checkpoint=checkpoint)
        calls.append(1)
        if len(calls) == 2 and not marker.exists():
            marker.touch()
            fail()

    tune.report = report
    try:
        trainable.train_fn(config)
    finally:
        tune.report = real_report


def killed_once_train_fn(config: dict[str, Any]) -> None:
    """``train_fn`` whose worker process kills itself with SIGKILL after epoch 2, once: a real dying
    worker (no exception, no cleanup)."""
    import os
    import signal

    train_fn_failing_once(config, lambda: os.kill(os.getpid(), signal.SIGKILL))


def crashed_once_train_fn(config: dict[str, Any]) -> None:
    """``train_fn`` that raises after epoch 2, once."""

    def crash() -> None:
        raise RuntimeError("simulated crash after epoch 2")

    train_fn_failing_once(config, crash)
