"""Optimizers whose learning rate tunes itself: :class:`RTHPO` (over SGD or AdamW) and the
:class:`ModelClosure` that lets it see the module and the batch behind a closure."""

from __future__ import annotations

from ray_rthpo.optim.closures import ModelClosure
from ray_rthpo.optim.rthpo import RTHPO, StepInfo

__all__ = ["RTHPO", "ModelClosure", "StepInfo"]
