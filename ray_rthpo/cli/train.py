"""``rthpo train``: one training run of one config, without Ray.

    rthpo train configs/digits.yaml
    rthpo train configs/mnist_mlp.yaml --set lr.eta0=0.05 --output runs/mlp --resume
    torchrun --standalone --nproc_per_node 2 -m ray_rthpo.cli train configs/digits.yaml   # data-parallel

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every process joins the default process group
(gloo on the CPU, NCCL with one GPU per process, ``LOCAL_RANK``'s) and trains its shard of each global
batch, the config's batch sizes being global (docs/distributed.md); rank 0 alone prints and writes the
output folder, and on ``--resume`` every rank loads rank 0's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ray_rthpo import metrics as M
from ray_rthpo.cli.common import add_common_arguments, default_output, format_epoch, user_code_paths
from ray_rthpo.errors import ConfigError, RTHPOError

if TYPE_CHECKING:
    from ray_rthpo.config import Config
    from ray_rthpo.tracking import MLflowRun


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rthpo train``: CONFIG, ``--set``, ``--output`` and ``--resume``."""
    add_common_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in the output folder")


def check_run_file(path: str | Path) -> None:
    """Refuse an empty file, an experiment config or a Table 1 workload given to ``rthpo train`` (which
    takes a run config), naming the command that runs it. Raises ConfigError."""
    from ray_rthpo.config import load_yaml
    from ray_rthpo.experiment.config import EXPERIMENT_KEYS, config_kind

    shown = str(path)
    data = load_yaml(path)
    kind = config_kind(data)
    if kind == "empty":  # a truncated or unsaved file, not a wish for every default
        raise ConfigError(f"config file {shown!r} is empty; rthpo train needs a run config: its data, model, "
                          "lr and train sections (e.g. configs/digits.yaml).")
    if kind == "experiment":
        keys = ", ".join(k for k in EXPERIMENT_KEYS if k in data)
        raise ConfigError(f"config file {shown!r} is an experiment config (it has {keys}), not a run config; "
                          f"run its strategies with rthpo compare {shown} (or one with rthpo run {shown} "
                          "--strategy NAME); rthpo train takes a run config such as configs/digits.yaml.")
    if kind == "table1":
        raise ConfigError(f"config file {shown!r} is a Table 1 workload, not a run config; run it with "
                          f"rthpo table1 --workload {shown}; rthpo train takes a run config such as "
                          "configs/digits.yaml.")


#: Beside a tracked run's checkpoint: the MLflow run it logs to, so that --resume goes on logging to it.
TRACKING_FILE = "tracking.json"


def start_tracking(config: Config, out: Path, name: str) -> MLflowRun:
    """Start (or, when ``out`` holds :data:`TRACKING_FILE` for the same URI and experiment, continue) the
    MLflow run of ``rthpo train``: the run config's flat keys as parameters, then one step per epoch
    (``tracker.report(result, trainer)``). ``name``: the config file's stem, the default experiment."""
    from ray_rthpo.report.files import atomic_write_text
    from ray_rthpo.tracking import MLflowRun, run_params, tracking_uri

    tracking = config.tracking
    assert tracking.mlflow is not None
    uri, experiment = tracking_uri(tracking.mlflow), tracking.experiment or name
    saved_path = out / TRACKING_FILE
    run_id = None
    if saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text())
        except (OSError, ValueError):
            saved = {}
        if isinstance(saved, dict) and saved.get("mlflow") == uri and saved.get("experiment") == experiment:
            run_id = saved.get("run_id")
    tracker = MLflowRun(tracking, experiment=experiment, run_name=out.name, params=run_params(config),
                        tags={"rthpo.command": "train", "rthpo.output": str(out.resolve())}, run_id=run_id)
    run_id = tracker.start()
    atomic_write_text(saved_path, json.dumps({"mlflow": uri, "experiment": experiment, "run_id": run_id}))
    print(f"MLflow: run {run_id} in experiment {experiment!r} at {uri}", flush=True)
    return tracker


def torchrun_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def join_torchrun(config: Config) -> tuple[Config, int, int, bool]:
    """``(config, rank, size, joined)``: under ``torchrun`` (``WORLD_SIZE`` > 1), this process is in the
    default process group (NCCL on ``LOCAL_RANK``'s GPU when ``train.device`` allows CUDA and one is
    present, else gloo on the CPU; ``joined``: this call initialised it) and ``config.train.device`` is that
    device; else ``(config, 0, 1, False)``, nothing done."""
    size = torchrun_size()
    if size <= 1:
        return config, 0, 1, False
    import torch
    import torch.distributed as dist

    cuda = config.train.device != "cpu" and torch.cuda.is_available()
    if config.train.device == "cuda" and not cuda:
        raise ConfigError("train.device is 'cuda', but this torchrun process sees no GPU; set "
                          "train.device: auto or cpu, or run torchrun on a machine with CUDA.")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return config.replace(**{"train.device": "cuda" if cuda else "cpu"}), dist.get_rank(), size, joined


def run(args: argparse.Namespace) -> int:
    """``rthpo train``: one run of a run config, without Ray; returns the exit status."""
    # The config is checked with the light config layer alone (an error is one line in well under a second);
    # torch is imported after it.
    from ray_rthpo.config import load_config, save_config

    check_run_file(args.config)
    config = load_config(args.config, args.overrides)
    from ray_rthpo.experiment.output import check_writable
    from ray_rthpo.factories import workload_name
    from ray_rthpo.report.files import atomic_write_text, write_history_csv
    from ray_rthpo.training.trainer import Trainer

    paths = user_code_paths(config, args.config)
    if paths is not None:
        config = config.replace(**{"train.pythonpath": paths})
    if torchrun_size() > 1 and not args.output:
        # the ranks must agree on the folder: a dated default could differ between them
        raise RTHPOError("under torchrun, give rthpo train an --output folder (every rank names the same).")
    config, rank, size, joined = join_torchrun(config)
    lead = rank == 0  # under torchrun, rank 0 prints and writes; alone, this process is rank 0

    def say(text: str) -> None:
        if lead:
            print(text, flush=True)

    out = Path(args.output) if args.output else default_output(Path(args.config).stem, resume=args.resume)
    checkpoint = out / "checkpoint.pt"
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise RTHPOError(f"output folder {str(out)!r} already holds a run; pass --resume to continue it, "
                         "or choose another --output.")
    if args.resume and not checkpoint.is_file():
        raise RTHPOError(f"--resume: no checkpoint at {str(checkpoint)!r}; "
                         "run without --resume to start afresh.")
    # a read-only or forbidden folder: one line now, not a traceback after the first epoch
    if lead:
        check_writable(out)
    say(f"rthpo train: {config.lr.method} on {workload_name(config)}, {config.train.epochs} epochs"
        + (f", data-parallel over {size} processes" if size > 1 else ""))
    # loads the data and imports the user's factories: a missing file or a broken factory fails before
    # anything is written (and before the output folder is named: it is printed once it exists)
    # tracking says where the run is logged, not what it is: the Trainer (and its checkpoint) never sees it
    tracked = config.tracking
    trainer = Trainer(config.replace(**{"tracking.mlflow": None, "tracking.experiment": None})
                      if tracked.enabled else config)
    if args.resume:  # a damaged checkpoint or another config is refused before config.yaml is rewritten
        trainer.load(checkpoint)  # every rank: rank 0's file
    if size > 1:  # every rank has checked the folder and read its checkpoint before rank 0 writes
        _barrier()
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    say(f"output folder {out}")
    if args.resume:
        say(f"resumed at epoch {trainer.epoch}")
    say(f"device {trainer.device}, {len(trainer.data.train)} train / {len(trainer.data.val)} val / "
        f"{len(trainer.data.test)} test examples, {trainer.steps_per_epoch} steps per epoch")
    tracker = start_tracking(config, out, Path(args.config).stem) if tracked.enabled and lead else None
    try:
        while not trainer.done:
            result = trainer.run_epoch()
            say(format_epoch(result))
            if lead:
                trainer.save(checkpoint)
                write_history_csv(trainer.history, out / "history.csv")
            if tracker is not None:
                tracker.report(result, trainer)
    except KeyboardInterrupt:
        if tracker is not None:
            tracker.end("KILLED")
        if not lead:
            return 130
        print(f"\ninterrupted; the last finished epoch is saved. Continue with: rthpo train {args.config} "
              f"--output {out} --resume", file=sys.stderr)
        return 130
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    if tracker is not None:
        tracker.end("FINISHED")
    if size > 1:  # rank 0's last checkpoint is written before any rank returns
        _barrier()
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()
    if not lead:
        return _leave(0, joined)
    write_history_csv(trainer.history, out / "history.csv")  # again: a resumed run may have had none to add
    final = trainer.history[-1]
    atomic_write_text(out / "result.json", json.dumps(final, indent=2))
    test = final.get(M.TEST_ACC)
    test_txt = f", test accuracy {test:.4f}" if isinstance(test, float) else ""
    print(f"{trainer.status}: validation accuracy {final[M.VAL_ACC]:.4f}{test_txt}, "
          f"final lr {final[M.LR]:.5g}, "
          f"{final[M.TOTAL_SECONDS]:.1f}s compute" + (f" on each of {size} processes" if size > 1 else ""),
          flush=True)
    return _leave(0, joined)


def _leave(status: int, joined: bool) -> int:
    """``status``; but a torchrun rank whose process group this run made (and has destroyed) ends here, with
    ``os._exit(status)`` after flushing its output: at interpreter exit gloo's C++ threads can abort the
    process (SIGABRT, "terminate called without an active exception") after every file is written, which
    torchrun would report as a failed run. Nothing is left to do then: the tracker has ended, rank 0's files
    are written atomically, and the group is gone."""
    if not joined:
        return status
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


__all__ = ["add_arguments", "check_run_file", "join_torchrun", "run", "start_tracking", "torchrun_size",
           "TRACKING_FILE"]
