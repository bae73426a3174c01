"""Trials of ``resources.workers: N`` (> 1): each Tune trial runs a Ray Train ``TorchTrainer`` of N workers.

This is the pattern Ray 2.60 documents for Train inside Tune (Train V2, ``RAY_TRAIN_V2_ENABLED`` on by
default; read from the installed ``ray/train/v2`` and ``ray/tune/integration/ray_train.py``): the Tune
function trainable (:func:`workers_train_fn`, the trial's own process, which only waits) builds and fits a
``ray.train.torch.TorchTrainer`` whose ``RunConfig(callbacks=[TuneReportCallback()])`` forwards rank 0's
``ray.train.report`` metrics to the trial's ``tune.report`` (with the Train checkpoint's path as the
``checkpoint_path`` metric; the checkpoint itself stays in Train's storage).

Every worker (:func:`worker_loop`) builds the same :class:`~ray_rthpo.training.trainer.Trainer` (same seed,
same weights): under the initialised process group (gloo on CPU, nccl when the workers have GPUs) the
Trainer gives each rank its shard of every global minibatch, validation batch and hypergradient sub-batch,
RTHPO averages over the group (ray_rthpo/optim/distributed.py), the other optimizers get the global
gradient from one all_reduce, and evaluation is sharded and all-reduced; so every rank takes the steps one
process takes on the global batch. Rank 0 reports every epoch and writes the checkpoint
(``Trainer.save``); every rank reads the same one when resuming.

Compute: a report's ``time/epoch_s`` (and ``time/train_s``, ``time/hyper_s``, ``time/eval_s``,
``time/total_s``) is worker-seconds: rank 0's seconds times the number of workers, so that the budget
stopper, ``compute_spent`` and the summary count workers x seconds without a change; the wall seconds
are ``time/epoch_wall_s``, the number of workers ``resources/workers``.

Faults: Train's own retries are off (``FailureConfig(max_failures=0)``); a killed worker fails the Train
run, hence the Tune trial, which Tune retries (``max_failures`` of the experiment) as any trial. The retried
trial's ``TorchTrainer`` has the same storage folder (the trial's), where Train's run snapshot names the
latest checkpoint: every worker continues from it (``ray.train.get_checkpoint()``), and the epochs redone
replace their earlier reports in the budget, as for single-process trials.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_rthpo import metrics as M

#: Reported by every multi-worker trial: its number of Ray Train workers (absent: 1).
WORKERS = "resources/workers"
#: The epoch's wall seconds on rank 0 (``time/epoch_s`` is worker-seconds in a multi-worker trial).
EPOCH_WALL_SECONDS = "time/epoch_wall_s"
#: The Trainer's seconds that become worker-seconds in a multi-worker trial's reports.
SCALED_SECONDS = (M.EPOCH_SECONDS, M.TOTAL_SECONDS, M.TRAIN_SECONDS, M.HYPER_SECONDS, M.EVAL_SECONDS)
#: The checkpoint's file name inside each Train checkpoint folder (the trainable's).
CHECKPOINT_FILE = "trainer.pt"


@dataclass(frozen=True)
class WorkerSpec:
    """How many Ray Train workers a trial runs and what each asks for (``resources.workers`` > 1)."""

    workers: int
    cpu: float = 1.0
    gpu: float = 0.0

    @property
    def backend(self) -> str:
        """The torch.distributed backend: nccl when the workers have GPUs, else gloo."""
        return "nccl" if self.gpu > 0 else "gloo"

    def scaling_config(self) -> Any:
        """Ray Train's ``ScalingConfig`` for these workers."""
        import ray.train

        per_worker = {"CPU": self.cpu, **({"GPU": self.gpu} if self.gpu > 0 else {})}
        return ray.train.ScalingConfig(num_workers=self.workers, use_gpu=self.gpu > 0,
                                       resources_per_worker=per_worker)


def to_worker_seconds(metrics: dict[str, Any], workers: int) -> dict[str, Any]:
    """Rank 0's epoch ``metrics`` with its seconds as worker-seconds (x ``workers``), the wall seconds
    as ``time/epoch_wall_s`` and ``resources/workers``."""
    out = dict(metrics)
    out[EPOCH_WALL_SECONDS] = float(metrics[M.EPOCH_SECONDS])
    for key in SCALED_SECONDS:
        if isinstance(out.get(key), (int, float)):
            out[key] = float(out[key]) * workers
    out[WORKERS] = workers
    return out


def worker_loop(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker of a trial: train ``loop_config["config"]`` (Ray's flat run config) on this
    rank's shards, resuming from ``ray.train.get_checkpoint()``; rank 0 reports and checkpoints."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from ray_rthpo.training.trainer import Trainer
    from ray_rthpo.tune.trainable import (
        CHECKPOINT_SECONDS,
        GPU_IDS,
        PID,
        REPORTED_AT,
        SETUP_SECONDS,
        config_from_ray,
        node_info,
    )

    start = time.perf_counter()
    context = ray.train.get_context()
    rank, size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    cuda = getattr(device, "type", "cpu") == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    run_config = config_from_ray(loop_config["config"])
    if run_config.train.device == "cuda" and not cuda:
        from ray_rthpo.errors import ConfigError

        raise ConfigError("train.device is 'cuda', but this Ray Train worker has no GPU; set "
                          "resources.gpu_per_worker: 1 on a machine with CUDA, or train.device: auto.")
    trainer = Trainer(run_config.replace(**{"train.device": "cuda" if cuda else "cpu"}))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # the retried trial's workers: the latest checkpoint, every rank the same file
        with checkpoint.as_directory() as folder:
            trainer.load(Path(folder) / CHECKPOINT_FILE)
    gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())
    where = {**node_info(trainer.device), GPU_IDS: gpu_ids, PID: os.getpid()}
    setup_s, checkpoint_s = time.perf_counter() - start, 0.0
    every_s, unsaved_s = run_config.train.checkpoint_every_s, 0.0
    while not trainer.done:
        metrics = to_worker_seconds(trainer.run_epoch(), size)
        metrics.update({**where, REPORTED_AT: time.time(), SETUP_SECONDS: setup_s,
                        CHECKPOINT_SECONDS: checkpoint_s})
        unsaved_s += float(metrics[EPOCH_WALL_SECONDS])
        begin = time.perf_counter()
        if rank == 0 and (trainer.done or unsaved_s >= every_s):
            with tempfile.TemporaryDirectory(prefix="rthpo-ckpt-") as folder:
                trainer.save(os.path.join(folder, CHECKPOINT_FILE))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            unsaved_s = 0.0
        else:  # every rank reports every epoch (Train's report is collective); only rank 0's reaches Tune
            ray.train.report(metrics)
        checkpoint_s += time.perf_counter() - begin


def workers_train_fn(config: dict[str, Any], spec: WorkerSpec) -> None:
    """The Tune function trainable of a multi-worker trial: fit a ``TorchTrainer`` of ``spec.workers``
    workers running :func:`worker_loop` on ``config``, its storage in the trial's folder (so a retried
    trial continues from Train's latest checkpoint)."""
    import ray.train
    import ray.train.torch
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    storage = tune.get_context().get_storage()
    trainer = ray.train.torch.TorchTrainer(
        worker_loop,
        train_loop_config={"config": dict(config)},
        scaling_config=spec.scaling_config(),
        torch_config=ray.train.torch.TorchConfig(backend=spec.backend),
        run_config=ray.train.RunConfig(
            name="train", storage_path=storage.trial_fs_path, storage_filesystem=storage.storage_filesystem,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=0),  # Tune retries the trial (module doc)
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    trainer.fit()


def workers_trainable(spec: WorkerSpec) -> Any:
    """A new Tune function trainable that runs each trial on ``spec.workers`` Ray Train workers
    (:func:`workers_train_fn`), named as the single-process ``train_fn`` (a fresh object each call, as
    :func:`ray_rthpo.tune.trainable.fresh_train_fn`: ``tune.with_resources`` marks the function)."""

    def train_fn(config: dict[str, Any]) -> None:
        workers_train_fn(config, spec)

    return train_fn


__all__ = ["WorkerSpec", "worker_loop", "workers_train_fn", "workers_trainable", "to_worker_seconds",
           "WORKERS", "EPOCH_WALL_SECONDS", "SCALED_SECONDS"]
