"""Optimizers whose learning rate tunes itself: :class:`RTHPO` (over SGD or AdamW) and the
:class:`ModelClosure` that lets it see the module and the batch behind a closure. Needs torch alone.

The names are imported on first use, so that the torch-free modules of this package (``settings``,
``schedules``) load without torch (the config layer reads them before a run needs torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["RTHPO", "ModelClosure", "StepInfo"]

_WHERE = {"RTHPO": "ray_rthpo.optim.rthpo", "StepInfo": "ray_rthpo.optim.rthpo",
          "ModelClosure": "ray_rthpo.optim.closures"}

if TYPE_CHECKING:
    from ray_rthpo.optim.closures import ModelClosure
    from ray_rthpo.optim.rthpo import RTHPO, StepInfo


def __getattr__(name: str) -> Any:
    """Import :class:`RTHPO`, :class:`StepInfo` or :class:`ModelClosure` on first use."""
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ray_rthpo.optim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
