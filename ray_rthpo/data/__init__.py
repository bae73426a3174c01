"""Datasets: what a run trains, validates and tests on (``datasets``), how files are read (``files``),
and where trials find them (``paths``)."""

from __future__ import annotations

from ray_rthpo.data.bundle import DataBundle, Split
from ray_rthpo.data.datasets import (
    augment_batch,
    cache_dir,
    default_data_dir,
    load_data,
)

__all__ = ["DataBundle", "Split", "augment_batch", "cache_dir", "default_data_dir", "load_data"]
