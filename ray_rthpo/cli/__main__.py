"""``python -m ray_rthpo.cli``: the same as the ``rthpo`` console script."""

from __future__ import annotations

from ray_rthpo.cli import main

raise SystemExit(main())
