"""The training loop, without Ray: one run of one configuration (``trainer``), stepped by the
learning-rate method of its config (``steppers``)."""

from __future__ import annotations

from ray_rthpo.training.trainer import Trainer, run_training

__all__ = ["Trainer", "run_training"]
