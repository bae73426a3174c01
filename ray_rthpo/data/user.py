"""A user's own data: the splits a data factory (``data.factory: mypkg.data:load``) returns, read into memory.

The factory is called as ``load(seed=train.seed, **data.factory_args)`` and returns the three splits as
``(train, val, test)`` or ``{"train": ..., "val": ..., "test": ..., "num_classes": C}`` (``num_classes``
optional: else the largest label + 1). Each split is one of

* a map-style ``torch.utils.data.Dataset`` whose items are ``(x, y)`` (a ``TensorDataset``, say),
* a ``torch.utils.data.DataLoader`` yielding ``(x, y)`` batches (its batch size and order do not matter),
* an ``(x, y)`` pair of tensors or numpy arrays with the same first dimension.

``x`` is one input of any shape (``input_shape = x.shape[1:]`` of the stacked split), ``y`` an integer class
index. The trainer draws its own seeded minibatches from the stacked tensors (that is what makes a run
resume bit for bit), so every split is read into memory once per run (per Ray trial). Inputs are used
as given: floating ones are cast to ``train.dtype``, nothing is normalised or augmented; do that in the
factory. ``val`` may be ``None``: it is then carved from ``train`` with ``data.val_fraction`` and the
seed, as for the built-in datasets. The validation split chooses hyperparameters and the test split
only reports accuracy, so a validation split that is the test split (the same object, or identical
tensors) is refused. ``data.train_subset``, ``val_subset`` and ``test_subset`` apply as for the built-ins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ray_rthpo.config import DataConfig
from ray_rthpo.data.bundle import DataBundle, Split, split_indices
from ray_rthpo.errors import ConfigError
from ray_rthpo.factories import call_factory, import_object

SPLITS = ("train", "val", "test")
#: What a data factory must return, for the error messages.
SHAPE = ("(train, val, test) or {'train': ..., 'val': ..., 'test': ...}, each a torch Dataset of (x, y), "
         "a DataLoader, or an (x, y) pair of tensors")
_READ_BATCH = 1024


def load_user_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Call ``cfg.factory``, read its splits into memory and check them; the :class:`DataBundle` of the
    run."""
    assert cfg.factory is not None  # load_data dispatches on it
    spec = cfg.factory
    load = import_object(spec, "data.factory")
    result = call_factory(load, "data.factory", spec, kwargs={"seed": seed, **(cfg.factory_args or {})})
    parts, num_classes = _unpack(result, spec)
    if parts["val"] is not None and parts["val"] is parts["test"]:
        raise ConfigError(_val_is_test(spec, "the same object"))
    train, test = _read(parts["train"], "train", spec), _read(parts["test"], "test", spec)
    if parts["val"] is None:
        train_idx, val_idx = split_indices(len(train), cfg.val_fraction, seed)
        train, val = _index(train, train_idx), _index(train, val_idx)
    else:
        val = _read(parts["val"], "val", spec)
    if _identical(val, test):
        raise ConfigError(_val_is_test(spec, "identical tensors"))
    if cfg.train_subset is not None:
        train = _index(train, np.arange(min(cfg.train_subset, len(train))))
    if cfg.val_subset is not None:
        val = _index(val, np.arange(min(cfg.val_subset, len(val))))
    if cfg.test_subset is not None and cfg.test_subset < len(test):  # a fixed sample, the same for every seed
        test = _index(test, np.sort(np.random.default_rng(0).permutation(len(test))[:cfg.test_subset]))
    shape = tuple(int(s) for s in train.x.shape[1:])
    for name, split in (("val", val), ("test", test)):
        if tuple(split.x.shape[1:]) != shape:
            raise ConfigError(f"data.factory {spec!r}: the {name} inputs have shape "
                              f"{tuple(split.x.shape[1:])} but the train inputs {shape}; return the same "
                              "input shape for every split.")
    largest = max(int(s.y.max()) for s in (train, val, test))
    smallest = min(int(s.y.min()) for s in (train, val, test))
    classes = largest + 1 if num_classes is None else num_classes
    if smallest < 0 or largest >= classes:
        raise ConfigError(f"data.factory {spec!r}: labels run from {smallest} to {largest}, but "
                          f"must be class indices in [0, num_classes={classes}); renumber them 0..C-1 "
                          "(or fix num_classes).")
    if classes < 2:
        raise ConfigError(f"data.factory {spec!r}: found {classes} class; classification needs at least 2 "
                          "(return num_classes, or labels of every class).")
    return DataBundle(name=spec, train=train, val=val, test=test, num_classes=classes, input_shape=shape,
                      scale=1.0, mean=(0.0,), std=(1.0,), raw_inputs=True)


def _val_is_test(spec: str, how: str) -> str:
    return (f"data.factory {spec!r} returned {how} as validation and test split; validation chooses the "
            "hyperparameters and test only reports, so they must differ: carve validation from the training "
            "data (or return None for it and set data.val_fraction).")


def _unpack(result: Any, spec: str) -> tuple[dict[str, Any], int | None]:
    """``{"train", "val", "test"}`` and num_classes (or None) from what the factory returned."""
    num_classes = None
    if isinstance(result, Mapping):
        unknown = sorted(set(map(str, result)) - {*SPLITS, "num_classes"})
        missing = [k for k in ("train", "test") if k not in result]
        if unknown or missing:
            raise ConfigError(f"data.factory {spec!r} returned a mapping with keys "
                              f"{sorted(map(str, result))}; it must have 'train', 'val', 'test' "
                              f"(and optionally 'num_classes'): {SHAPE}.")
        parts = {k: result.get(k) for k in SPLITS}
        num_classes = result.get("num_classes")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
            raise ConfigError(f"data.factory {spec!r} returned num_classes={num_classes!r}; give an "
                              "integer >= 2.")
    elif isinstance(result, Sequence) and not isinstance(result, (str, bytes)) and len(result) == 3:
        parts = dict(zip(SPLITS, result, strict=True))
    else:
        got = f"a {type(result).__name__}" + (f" of length {len(result)}"
                                              if isinstance(result, Sequence) else "")
        raise ConfigError(f"data.factory {spec!r} returned {got}, but must return {SHAPE}.")
    for name in ("train", "test"):
        if parts[name] is None:
            raise ConfigError(f"data.factory {spec!r} returned None as {name} split; return {SHAPE} "
                              "(only val may be None).")
    return parts, num_classes


def _array_like(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def _read(obj: Any, name: str, spec: str) -> Split:
    """One split as stacked CPU tensors: ``x`` as given, ``y`` int64 of shape (N,)."""
    where = f"data.factory {spec!r}: the {name} split"
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(_array_like(v) for v in obj):
        try:
            x, y = (torch.as_tensor(v) for v in obj)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ConfigError(f"{where} is an (x, y) pair that torch cannot read ({err}); return numeric "
                              "arrays.") from None
    elif isinstance(obj, (DataLoader, Dataset)) or (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        loader = (obj if isinstance(obj, DataLoader)
                  else DataLoader(obj, batch_size=_READ_BATCH, shuffle=False))
        xs, ys = [], []
        try:
            for batch in loader:
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    raise ConfigError(f"{where} yields {type(batch).__name__} items, but each must be "
                                      "an (x, y) pair; return e.g. TensorDataset(x, y).")
                xs.append(torch.as_tensor(batch[0]))
                ys.append(torch.as_tensor(batch[1]))
        except ConfigError:
            raise
        except Exception as err:
            first = str(err).strip().splitlines()
            raise ConfigError(f"{where} could not be read ({type(err).__name__}: "
                              f"{first[0] if first else ''}); return {SHAPE}.") from None
        if not xs:
            raise ConfigError(f"{where} is empty; every split needs examples.")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise ConfigError(f"{where} is a {type(obj).__name__}, but must be a torch Dataset of (x, y), a "
                          "DataLoader, or an (x, y) pair of tensors.")
    if x.ndim < 1 or len(x) == 0 or y.shape != (len(x),):
        raise ConfigError(f"{where} has inputs of shape {tuple(x.shape)} and labels of shape "
                          f"{tuple(y.shape)}; return N inputs and N labels (one class index per input, "
                          "shape (N,)).")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ConfigError(f"{where} has labels of dtype {str(y.dtype).replace('torch.', '')}, but "
                          "they must be integer class indices; return them as torch.long (y.long()).")
    return Split(x.detach().cpu().contiguous(), y.detach().cpu().to(torch.int64).contiguous())


def _index(split: Split, idx: np.ndarray) -> Split:
    index = torch.as_tensor(idx, dtype=torch.int64)
    return Split(split.x[index], split.y[index])


def _identical(a: Split, b: Split) -> bool:
    return (a.x.shape == b.x.shape and a.x.dtype == b.x.dtype and torch.equal(a.x, b.x)
            and torch.equal(a.y, b.y))


__all__ = ["load_user_data", "SPLITS"]
