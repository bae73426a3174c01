"""What a run trains, validates and tests on: the splits of a dataset and how its inputs are normalised.

:class:`DataBundle` is what every loader returns (the built-in datasets in :mod:`ray_rthpo.data.datasets`, a
user's factory through :mod:`ray_rthpo.data.user`); :func:`split_indices` carves the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ray_rthpo.errors import DataError


@dataclass(frozen=True)
class Split:
    """One part of a dataset: uint8 images ``x`` (N, C, H, W) with raw pixel values, int64 labels ``y``
    (a user's data: inputs ``x`` (N, *input_shape) as its factory gave them)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.x.shape[0])


@dataclass(frozen=True)
class DataBundle:
    """A dataset split three ways, with what a model and the normalization need to know about it."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # True for a user's data (data.factory): the inputs are used as given, see normalize().
    raw_inputs: bool = False
    # Per (device, dtype): the affine map of normalize() as broadcastable (C, 1, 1) tensors.
    _affine: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def normalize(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Map a uint8 batch (N, C, H, W) or image (C, H, W), on any device, to ``(x/scale - mean)/std``
        as ``dtype`` on the same device (the constants are cached per device, so no host sync).

        With ``raw_inputs`` (a user's data) the batch is only copied: floating inputs cast to ``dtype``,
        others (token ids, say) kept as they are."""
        if self.raw_inputs:
            return x.to(dtype, copy=True) if x.is_floating_point() else x.clone()
        key = (x.device, dtype)
        if key not in self._affine:
            mean = torch.tensor(self.mean, dtype=torch.float64)
            std = torch.tensor(self.std, dtype=torch.float64)
            a, b = 1.0 / (self.scale * std), -mean / std
            self._affine[key] = (a.to(x.device, dtype).view(-1, 1, 1), b.to(x.device, dtype).view(-1, 1, 1))
        a, b = self._affine[key]
        return x.to(dtype, copy=True).mul_(a).add_(b)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the per-device cache (it may hold CUDA tensors)."""
        return {**self.__dict__, "_affine": {}}


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: a permutation of range(n) seeded by ``seed``; the first round(f*n) are val."""
    n_val = round(val_fraction * n)
    if not 1 <= n_val < n:
        raise DataError(f"data.val_fraction={val_fraction} of {n} training examples gives {n_val} validation "
                        "examples; choose a val_fraction (or a larger dataset) that leaves both splits "
                        "non-empty.")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_val:], perm[:n_val]


__all__ = ["Split", "DataBundle", "split_indices"]
