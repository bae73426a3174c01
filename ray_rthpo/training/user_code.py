"""The user's own model, data and loss checked once, before a run or Ray starts (one line on failure).

The factories are imported and called the way a trial will (:mod:`ray_rthpo.factories`); with the data
at hand, one forward pass and loss run on a few training examples, on the CPU.
"""

from __future__ import annotations

import json

import torch

from ray_rthpo.config import Config
from ray_rthpo.data import load_data
from ray_rthpo.factories import (
    KEYS,
    check_model_and_loss,
    import_object,
    resolve_loss,
    use_pythonpath,
    uses_user_code,
)
from ray_rthpo.models import build_model

#: Run configs whose user code passed :func:`check_user_code` (a comparison checks each strategy's once).
_CHECKED: set[str] = set()


def check_user_code(config: Config, *, full: bool = True) -> None:
    """Check the factories and loss ``config`` names, before a run or Ray starts; raise ConfigError.

    Always: each names an importable callable (``train.pythonpath`` is put on ``sys.path`` first). With
    ``full`` (a local run, where the data can be read): the data are loaded, the model built on them, and
    one forward pass and loss computed on a few training examples, on the CPU. Passing configs are cached.
    """
    if not uses_user_code(config):
        return
    sections = config.to_dict()
    key = json.dumps({name: sections[name] for name in ("data", "model", "train")} | {"full": full},
                     sort_keys=True, default=str)
    if key in _CHECKED:
        return
    use_pythonpath(config.train.pythonpath)
    for name, spec in zip(KEYS, (config.model.factory, config.data.factory, config.train.loss), strict=True):
        if spec is not None:
            import_object(spec, name)
    if full:
        dtype = torch.float64 if config.train.dtype == "float64" else torch.float32
        with torch.random.fork_rng(devices=[]):  # the caller's random numbers are left as they were
            torch.manual_seed(config.train.seed)
            data = load_data(config.data, config.train.seed)
            model = build_model(config.model, data.input_shape, data.num_classes).to(dtype=dtype)
            n = min(4, len(data.train))
            check_model_and_loss(model, resolve_loss(config.train.loss),
                                 data.normalize(data.train.x[:n], dtype), data.train.y[:n],
                                 data.num_classes, config)
    _CHECKED.add(key)


__all__ = ["check_user_code"]
