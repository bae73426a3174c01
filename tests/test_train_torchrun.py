"""``rthpo train`` under ``torchrun``: 2 gloo processes on the CPU train one run data-parallel (each its
shard of every global batch) and end every epoch with what one process computes on the whole batches, to
1e-10 in float64; rank 0 alone writes the output folder, and ``--resume`` (every rank loading rank 0's
checkpoint) continues exactly as one process's resume does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from script_runner import torchrun

from ray_rthpo import metrics as M

pytestmark = [pytest.mark.harness, pytest.mark.slow]

#: digits, a 32-unit MLP, RT-HPO moving eta every epoch, float64 (as tests/test_train_workers.py's BASE).
RUN = {
    "data": {"name": "digits", "batch_size": 64, "val_batch_size": 64},
    "model": {"name": "mlp", "hidden": [32]},
    "lr": {"method": "rthpo", "eta0": 0.05, "beta": 0.5, "tune_fraction": 1.0},
    "optim": {"momentum": 0.9, "weight_decay": 1.0e-4},
    "train": {"epochs": 2, "seed": 0, "dtype": "float64", "device": "cpu"},
}
SAME = (M.STEP, M.TRAIN_LOSS, M.TRAIN_ACC, M.VAL_LOSS, M.VAL_ACC, M.TEST_LOSS, M.TEST_ACC, M.LR)


def _torchrun(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=2 -m ray_rthpo.cli train CONFIG --output OUT EXTRA``."""
    done = torchrun(["--standalone", "--nproc_per_node=2", "-m", "ray_rthpo.cli", "train", str(config),
                     "--output", str(out), *extra])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _one_process(config: Path, out: Path, *extra: str) -> None:
    """The same ``rthpo train`` as one process (in this one)."""
    from ray_rthpo.cli import main

    assert main(["train", str(config), "--output", str(out), *extra]) == 0


def test_two_torchrun_processes_train_as_one_and_resume_exactly(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RUN))
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process(config, one)
    first = _torchrun(config, two)
    assert "data-parallel over 2 processes" in first.stdout
    assert first.stdout.count("epoch   1 ") == 1  # rank 0 prints; rank 1 is silent
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint.pt", "config.yaml", "history.csv",
                                                     "result.json"]
    # a third epoch from the epoch-2 checkpoint
    _one_process(config, one, "--resume", "--set", "train.epochs=3")
    assert "resumed at epoch 2" in _torchrun(config, two, "--resume", "--set", "train.epochs=3").stdout
    a, b = pd.read_csv(one / "history.csv"), pd.read_csv(two / "history.csv")
    assert list(a[M.EPOCH]) == list(b[M.EPOCH]) == [1, 2, 3]
    assert a[M.LR].nunique() == 3  # eta moved every epoch: a trajectory worth comparing
    for key in SAME:
        assert b[key].tolist() == pytest.approx(a[key].tolist(), rel=1e-10, abs=1e-12), key


def test_torchrun_needs_an_output_folder_every_rank_names(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RUN))
    done = torchrun(["--standalone", "--nproc_per_node=2", "-m", "ray_rthpo.cli", "train", str(config)],
                    cwd=tmp_path)
    assert done.returncode != 0
    assert "under torchrun, give rthpo train an --output folder" in done.stdout + done.stderr
    assert not (tmp_path / "runs").exists()
