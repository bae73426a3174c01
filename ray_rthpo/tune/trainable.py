"""The Ray Tune function trainable: the Ray-free training loop, reported and checkpointed every epoch.

This is the only module that calls ``ray.tune.report`` and ``ray.tune.get_checkpoint``::

    from ray import tune
    from ray_rthpo.config import load_config
    from ray_rthpo.tune.trainable import train_fn

    space = {**load_config("configs/digits.yaml").to_flat(), "lr.eta0": tune.loguniform(1e-3, 1.0)}
    tune.run(train_fn, config=space, num_samples=4, metric="val/acc", mode="max")

``train_fn(config)`` takes Ray's flat dotted config (``{"lr.eta0": 0.1, "data.name": "digits", ...}``;
keys left out keep their defaults), builds a :class:`~ray_rthpo.training.trainer.Trainer`, continues from
``ray.tune.get_checkpoint()`` when Tune restores the trial (from its first epoch when that checkpoint's
``trainer.pt`` was deleted; a damaged one fails the trial, naming the file), and after every epoch reports the
trainer's metrics plus where the trial ran (node id, IP, hostname, device name), with a checkpoint
written by ``Trainer.save`` (model, optimizer with eta, tangents, mu, RNGs, history).

Under population-based training (``scheduler: pbt``) Tune restarts a trial from another trial's
checkpoint with mutated learning-rate keys; ``Trainer.load(..., adopt=ADOPTABLE_KEYS)`` takes over that
model and applies the new values (see :meth:`ray_rthpo.training.trainer.Trainer.load_state_dict`).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ray_rthpo.config import Config, config_from_dict
from ray_rthpo.errors import ConfigError

CHECKPOINT_FILE = "trainer.pt"
#: Extra metrics the trainable adds to the trainer's: where and when the epoch ran.
NODE_ID = "node/id"
NODE_IP = "node/ip"
HOSTNAME = "node/hostname"
DEVICE_NAME = "node/device_name"
GPU_IDS = "node/gpu_ids"  # the GPUs Ray assigned to the trial (ray.get_gpu_ids()), comma-separated
PID = "node/pid"  # the trial's process: trials of one comparison share a few (Tune reuses them)
REPORTED_AT = "time/reported_at"  # the trial's own clock (time.time()) at the report
#: Seconds this trial attempt spent building its trainer (data load, model) and restoring its checkpoint:
#: not part of the compute budget, reported beside it.
SETUP_SECONDS = "time/setup_s"
#: Seconds spent writing checkpoints and handing reports to Tune, summed over the earlier epochs.
CHECKPOINT_SECONDS = "time/checkpoint_s"


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


def trial_device(requested: str, gpu_ids: Sequence[Any], visible: str | None, cuda_available: bool,
                 device_count: int = 0) -> str:
    """The device a trial trains on: ``"cpu"`` or ``"cuda:N"``.

    ``requested`` is the run config's ``train.device`` (auto, cpu, cuda), ``gpu_ids`` what Ray assigned
    to the trial (``ray.get_gpu_ids()``; fractional shares of one GPU give its id), ``visible`` the
    trial's ``CUDA_VISIBLE_DEVICES`` (Ray sets it to the assigned ids, so the first visible device,
    ``cuda:0``, is the trial's). ``auto`` never takes a GPU Ray did not assign, and runs on the CPU when
    the assigned GPU is logical only (no CUDA: ``ray.init(num_gpus=...)`` on a CPU machine);
    ``cuda`` then fails with the fix. Raises ConfigError.
    """
    if requested == "cpu":
        return "cpu"
    if not gpu_ids or not cuda_available:
        if requested == "cuda":
            why = ("Ray gave this trial no GPU" if not gpu_ids
                   else f"Ray gave it GPU {list(gpu_ids)} but CUDA is absent")
            raise ConfigError(f"train.device is 'cuda', but {why}; ask for one with resources.gpu "
                              "(e.g. 0.5) on a machine with CUDA, or set resources.cpu_fallback: true to run "
                              "on the CPU.")
        return "cpu"
    if visible is not None and visible.strip() not in ("", "NoDevFiles"):
        return "cuda:0"  # CUDA_VISIBLE_DEVICES holds the assigned ids: they are renumbered from 0
    index = int(str(gpu_ids[0]))
    if device_count and index >= device_count:
        raise ConfigError(f"Ray assigned GPU {index}, but this process sees only {device_count} "
                          "CUDA devices; do not set RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, or fix the "
                          "node's GPU count.")
    return f"cuda:{index}"


def train_fn(config: dict[str, Any]) -> None:
    """Run one trial of ``config`` (Ray's flat dict), reporting and checkpointing every epoch."""
    import ray
    import torch
    from ray import tune

    from ray_rthpo.config import ADOPTABLE_KEYS
    from ray_rthpo.training.trainer import Trainer

    start = time.perf_counter()
    run_config = config_from_ray(config)
    gpu_ids = ray.get_gpu_ids()
    device = trial_device(run_config.train.device, gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES"),
                          torch.cuda.is_available(),
                          torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))  # "cuda" below is this device
    trainer = Trainer(run_config.replace(**{"train.device": "cuda" if device.startswith("cuda") else "cpu"}))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        # A retried trial gets its own checkpoint back (same config). Population-based training restores
        # a *better trial's* checkpoint with a mutated config: the learning-rate keys are then adopted
        # (the model, optimizer state and RNGs are the checkpoint's; eta0 becomes the current eta).
        with checkpoint.as_directory() as folder:
            state_file = Path(folder) / CHECKPOINT_FILE
            if state_file.exists():  # a damaged one raises, naming the file and the fix
                trainer.load(state_file, adopt=ADOPTABLE_KEYS)
            else:  # deleted as `--resume` advised for a damaged one: the trial starts again from epoch 1
                print(f"rthpo: {state_file} is gone; this trial starts again from its first epoch",
                      file=sys.stderr)
    where = {**node_info(trainer.device), GPU_IDS: ",".join(str(g) for g in gpu_ids), PID: os.getpid()}
    setup_s, checkpoint_s = time.perf_counter() - start, 0.0
    every_s, unsaved_s = run_config.train.checkpoint_every_s, 0.0
    while not trainer.done:
        metrics = {**trainer.run_epoch(), **where, REPORTED_AT: time.time(), SETUP_SECONDS: setup_s,
                   CHECKPOINT_SECONDS: checkpoint_s}
        unsaved_s += float(metrics["time/epoch_s"])
        begin = time.perf_counter()
        if trainer.done or unsaved_s >= every_s:  # every_s = 0: every epoch
            with tempfile.TemporaryDirectory(prefix="rthpo-ckpt-") as folder:
                trainer.save(os.path.join(folder, CHECKPOINT_FILE))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            unsaved_s = 0.0
        else:
            tune.report(metrics)
        checkpoint_s += time.perf_counter() - begin


def fresh_train_fn() -> Callable[[dict[str, Any]], None]:
    """A new function object with :func:`train_fn`'s code and name, for ``tune.with_resources``.

    Ray's ``with_resources`` stores the resources as an attribute *on the function it is given*;
    wrapping the module's ``train_fn`` would make a later ``tune.run(train_fn, resources_per_trial=...)``
    in the same process fail. Each experiment wraps its own copy instead. (Trials of several Ray Train
    workers: :func:`ray_rthpo.tune.train_workers.workers_trainable`.)
    """
    return types.FunctionType(train_fn.__code__, train_fn.__globals__, train_fn.__name__,
                              train_fn.__defaults__, train_fn.__closure__)


__all__ = ["train_fn", "fresh_train_fn",
           "config_from_ray", "node_info", "trial_device", "CHECKPOINT_FILE",
           "NODE_ID", "NODE_IP", "HOSTNAME", "DEVICE_NAME", "GPU_IDS", "PID", "REPORTED_AT", "SETUP_SECONDS",
           "CHECKPOINT_SECONDS"]
