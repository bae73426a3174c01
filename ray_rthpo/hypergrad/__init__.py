"""Hypergradient maths: pure functions (``functional``), HVP routes (``hvp``), the eta-update rules
(``hyper_updates``, torch-free), and a literal flat-vector reference used by the tests (``reference``).

The functions below are imported on first use, so that ``hyper_updates`` loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "dot",
    "first_order_hypergradient",
    "hypergradient",
    "lr_step",
    "tangent_step_",
]

if TYPE_CHECKING:
    from ray_rthpo.hypergrad.functional import (
        dot,
        first_order_hypergradient,
        hypergradient,
        lr_step,
        tangent_step_,
    )


def __getattr__(name: str) -> Any:
    """Import one of :data:`__all__` from ``ray_rthpo.hypergrad.functional`` on first use."""
    if name in __all__:
        return getattr(importlib.import_module("ray_rthpo.hypergrad.functional"), name)
    raise AttributeError(f"module 'ray_rthpo.hypergrad' has no attribute {name!r}")
