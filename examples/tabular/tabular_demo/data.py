"""The breast-cancer table (569 tumours x 30 measurements, 2 classes), offline from scikit-learn.

:func:`load` is a data factory: ``load(seed=..., **factory_args)`` returns the train, validation and
test splits as torch map-style Datasets. The test split is fixed (the same for every seed); the
validation split is carved from the rest with ``seed``; every feature is standardised with the
training split's mean and standard deviation only, so nothing about validation or test leaks in.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

NUM_FEATURES = 30
NUM_CLASSES = 2


def load(seed: int = 0, *, test_fraction: float = 0.2, val_fraction: float = 0.2) -> dict[str, TensorDataset]:
    """``{"train", "val", "test"}`` TensorDatasets of (float32 features (30,), int64 label)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    rest, test = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=0)
    train, val = train_test_split(rest, test_size=val_fraction, stratify=y[rest], random_state=seed)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8

    def split(idx: np.ndarray) -> TensorDataset:
        features = torch.as_tensor((x[idx] - mean) / std, dtype=torch.float32)
        return TensorDataset(features, torch.as_tensor(y[idx], dtype=torch.int64))

    return {"train": split(train), "val": split(val), "test": split(test)}
