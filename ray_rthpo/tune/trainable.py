"""The Ray Tune function trainable: the Ray-free training loop, reported and checkpointed every epoch.

This is the only module that calls ``ray.tune.report`` and ``ray.tune.get_checkpoint``::

    from ray import tune
    from ray_rthpo.config import load_config
    from ray_rthpo.tune.trainable import train_fn

    space = {**load_config("configs/digits.yaml").to_flat(), "lr.eta0": tune.loguniform(1e-3, 1.0)}
    tune.run(train_fn, config=space, num_samples=4, metric="val/acc", mode="max")

``train_fn(config)`` takes Ray's flat dotted config (``{"lr.eta0": 0.1, "data.name": "digits", ...}``;
keys left out keep their defaults), builds a :class:`~ray_rthpo.training.trainer.Trainer`, continues from
``ray.tune.get_checkpoint()`` when Tune restores the trial, and after every epoch reports the
trainer's metrics plus where the trial ran (node id, IP, hostname, device name), with a checkpoint
written by ``Trainer.save`` (model, optimizer with eta, tangents, mu, RNGs, history).

Under population-based training (``scheduler: pbt``) Tune restarts a trial from another trial's
checkpoint with mutated learning-rate keys; ``Trainer.load(..., adopt=ADOPTABLE_KEYS)`` takes over that
model and applies the new values (see :meth:`ray_rthpo.training.trainer.Trainer.load_state_dict`).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray_rthpo.config import Config, config_from_dict

CHECKPOINT_FILE = "trainer.pt"
#: Extra metrics the trainable adds to the trainer's: where and when the epoch ran.
NODE_ID = "node/id"
NODE_IP = "node/ip"
HOSTNAME = "node/hostname"
DEVICE_NAME = "node/device_name"
REPORTED_AT = "time/reported_at"  # the trial's own clock (time.time()) at the report


def config_from_ray(config: dict[str, Any]) -> Config:
    """The run :class:`Config` from Ray's flat dict; numpy scalars (from searchers) become Python numbers."""
    clean = {key: value.item() if hasattr(value, "item") and not isinstance(value, (list, tuple)) else value
             for key, value in config.items()}
    return config_from_dict(clean)


def node_info(device: Any) -> dict[str, Any]:
    """Where this trial runs: Ray node id and IP, hostname, and the name of its torch device."""
    import ray
    import torch

    context = ray.get_runtime_context()
    if getattr(device, "type", str(device)) == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        import platform

        name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {NODE_ID: context.get_node_id(), NODE_IP: ray.util.get_node_ip_address(),
            HOSTNAME: socket.gethostname(), DEVICE_NAME: name}


def train_fn(config: dict[str, Any]) -> None:
    """Run one trial of ``config`` (Ray's flat dict), reporting and checkpointing every epoch."""
    from ray import tune

    from ray_rthpo.config import ADOPTABLE_KEYS
    from ray_rthpo.training.trainer import Trainer

    trainer = Trainer(config_from_ray(config))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        # A retried trial gets its own checkpoint back (same config). Population-based training restores
        # a *better trial's* checkpoint with a mutated config: the learning-rate keys are then adopted
        # (the model, optimizer state and RNGs are the checkpoint's; eta0 becomes the current eta).
        with checkpoint.as_directory() as folder:
            trainer.load(Path(folder) / CHECKPOINT_FILE, adopt=ADOPTABLE_KEYS)
    where = node_info(trainer.device)
    while not trainer.done:
        metrics = {**trainer.run_epoch(), **where, REPORTED_AT: time.time()}
        with tempfile.TemporaryDirectory(prefix="rthpo-ckpt-") as folder:
            trainer.save(os.path.join(folder, CHECKPOINT_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def fresh_train_fn() -> Callable[[dict[str, Any]], None]:
    """A new function object with :func:`train_fn`'s code and name, for ``tune.with_resources``.

    Ray's ``with_resources`` stores the resources as an attribute *on the function it is given*;
    wrapping the module's ``train_fn`` would make a later ``tune.run(train_fn, resources_per_trial=...)``
    in the same process fail. Each experiment wraps its own copy instead.
    """
    return types.FunctionType(train_fn.__code__, train_fn.__globals__, train_fn.__name__,
                              train_fn.__defaults__, train_fn.__closure__)


__all__ = ["train_fn", "fresh_train_fn", "config_from_ray", "node_info", "CHECKPOINT_FILE",
           "NODE_ID", "NODE_IP", "HOSTNAME", "DEVICE_NAME", "REPORTED_AT"]
