"""Figure 1 of the paper: problem (1) on the Rosenbrock function, learned 4-step schedule vs. 1/t decay.

Usage (from the repository root)::

    python experiments/rosenbrock.py --out results/rosenbrock.png [--start -1.2 1.0]

All the logic lives in :mod:`ray_rthpo.rosenbrock`; this is a thin command-line wrapper.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from ray_rthpo.rosenbrock import main
except ModuleNotFoundError:  # a checkout without `pip install -e .`: use the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ray_rthpo.rosenbrock import main

if __name__ == "__main__":
    raise SystemExit(main())
