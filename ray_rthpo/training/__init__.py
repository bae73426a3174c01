"""The training loop, without Ray: one run of one configuration (``trainer``), with the optimizer (and lr
scheduler) of its config's learning-rate method (``methods``)."""

from __future__ import annotations

from ray_rthpo.training.trainer import Trainer, run_training

__all__ = ["Trainer", "run_training"]
