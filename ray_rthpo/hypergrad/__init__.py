"""Hypergradient maths: pure functions (``functional``), HVP routes (``hvp``), and a literal
flat-vector reference used by the tests (``reference``)."""

from __future__ import annotations

from ray_rthpo.hypergrad.functional import (
    dot,
    first_order_hypergradient,
    hypergradient,
    lr_step,
    tangent_step_,
)

__all__ = [
    "dot",
    "first_order_hypergradient",
    "hypergradient",
    "lr_step",
    "tangent_step_",
]
