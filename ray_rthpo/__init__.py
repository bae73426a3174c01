"""ray_rthpo: RT-HPO (online learning-rate tuning by hypergradients) with Ray Tune integration.

Layout (each folder says what it holds; only ``tune`` imports Ray):

* ``optim`` -- the public optimizer :class:`RTHPO` (``from ray_rthpo import RTHPO``) and :class:`ModelClosure`
* ``hypergrad`` -- the maths: pure functions over lists of tensors, and a literal reference for the tests
* ``data``, ``models``, ``training`` -- datasets, networks and the Ray-free training loop
* ``experiment`` -- what an experiment is (strategies, spaces, budget), without Ray
* ``report`` -- the one selection rule, summaries, statistics, tables and figures, without Ray
* ``tune`` -- the Ray Tune adapters: the trainable, searchers, the compute-budget stopper, the runners
* ``cli`` -- the ``rthpo`` command line
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["RTHPO", "ModelClosure", "__version__"]

if TYPE_CHECKING:
    from ray_rthpo.optim import RTHPO, ModelClosure


def __getattr__(name: str) -> Any:
    """``ray_rthpo.RTHPO`` / ``ray_rthpo.ModelClosure``, imported on first use: importing a torch-free
    module of the package (the config layer, the CLI's argument checks) does not load torch."""
    if name in ("RTHPO", "ModelClosure"):
        return getattr(importlib.import_module("ray_rthpo.optim"), name)
    raise AttributeError(f"module 'ray_rthpo' has no attribute {name!r}")
