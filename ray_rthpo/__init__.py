"""ray_rthpo: RT-HPO (online learning-rate tuning by hypergradients) with Ray Tune integration.

The maths (``ray_rthpo.hypergrad``) and the training loop (``ray_rthpo.train``) run without Ray;
``ray_rthpo.tune`` is the adapter layer.
"""

from __future__ import annotations

__version__ = "0.1.0"
