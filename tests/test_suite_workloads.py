"""The suite's char_lm_adamw, cifar10_cnn and mnist_lenet workloads: their comparison configs load (every
strategy resolved and checked), their factories build models of the right output shape, one Trainer epoch
runs on a tiny subset (an RT-HPO row and a fixed row), and the language model's splits share no file."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.harness

REPO = Path(__file__).resolve().parents[1]
CHAR_LM = REPO / "examples" / "char_lm"
CIFAR_CNN = REPO / "examples" / "cifar_cnn"
CIFAR_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg"
MNIST = REPO.parent / "shared" / "data" / "MNIST"
TINY_LM = {"context": 64, "train_size": 256, "val_size": 128, "test_size": 128}


def _experiment(name: str):  # noqa: ANN202 (ExperimentConfig: imported lazily, with the harness)
    from ray_rthpo.experiment.config import load_experiment

    return load_experiment(REPO / "configs" / "suite" / f"{name}.yaml", cwd=REPO)


def _shrink(config, **overrides: object):  # noqa: ANN001, ANN202 (Config)
    """``config`` for one epoch on the CPU, shrunk by ``overrides``, its pythonpath made absolute."""
    paths = [str(REPO / p) for p in config.train.pythonpath]
    return config.replace(**{"train.epochs": 1, "train.device": "cpu", "train.pythonpath": paths,
                             **overrides})


def _epochs(exp, rows: tuple[str, ...], **overrides: object) -> None:  # noqa: ANN001
    """One Trainer epoch of each of ``rows`` (run configs shrunk by ``overrides``), on data loaded once."""
    from ray_rthpo.data import load_data
    from ray_rthpo.factories import use_pythonpath
    from ray_rthpo.training.trainer import Trainer

    first = _shrink(exp.run_config(rows[0]), **overrides)
    use_pythonpath(first.train.pythonpath)
    data = load_data(first.data, first.train.seed)
    for row in rows:
        config = _shrink(exp.run_config(row), **overrides)
        assert config.data == first.data  # the rows differ in their optimizer only
        _epoch(Trainer(config, data=data))


def _epoch(trainer) -> None:  # noqa: ANN001 (Trainer)
    """Run the trainer's one epoch and check it ended, with finite losses."""
    metrics = trainer.run_epoch()
    assert trainer.done and metrics["step"] == trainer.steps_per_epoch
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])


def test_char_lm_splits_share_no_file_and_are_deterministic() -> None:
    sys.path.insert(0, str(CHAR_LM))
    try:
        from char_lm_demo import data
    finally:
        sys.path.remove(str(CHAR_LM))
    files = data.split_files()
    names = {split: {p.name for p in paths} for split, paths in files.items()}
    assert all(names.values()), {k: len(v) for k, v in names.items()}
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert not names["val"] & names["test"]
    assert sum(map(len, names.values())) == len(data.source_files())
    first, second = data.load(seed=0, **TINY_LM), data.load(seed=1, **TINY_LM)
    for split in data.SPLITS:
        x, y = first[split]
        assert x.shape == (TINY_LM[f"{split}_size"], 64) and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert int(x.max()) < data.NUM_CLASSES and int(y.max()) < data.NUM_CLASSES
        assert torch.equal(x, second[split][0]) and torch.equal(y, second[split][1])
    assert first["num_classes"] == 101 == len(data.VOCAB) + 1
    assert data.decode(data.encode("def f(x):\n\treturn é")) == "def f(x):\n\treturn \ufffd"


def test_char_lm_config_model_and_one_epoch() -> None:
    exp = _experiment("char_lm_adamw")
    names = {s.name for s in exp.strategies}
    assert {"rthpo_adamw_lo", "rthpo_adamw_mid", "rthpo_adamw_hi", "grid_adamw", "optuna_adamw",
            "adamw_1e-3", "rthpo_old_default"} <= names
    assert not any(n.startswith(("rthpo_sgd", "grid_sgd", "optuna_sgd")) for n in names)
    for row in ("rthpo_adamw_lo", "rthpo_adamw_mid", "rthpo_adamw_hi", "adamw_1e-3"):
        config = exp.run_config(row)
        assert config.optim.base == "adamw" and config.optim.weight_decay == 0.01
    _epochs(exp, ("rthpo_adamw_mid", "adamw_1e-3"), **{"data.factory_args": TINY_LM})
    from ray_rthpo.factories import use_pythonpath

    use_pythonpath([str(CHAR_LM)])
    from char_lm_demo.model import build

    model = build((64,), 101, **exp.base.model.factory_args)
    assert model(torch.randint(0, 101, (5, 64), dtype=torch.uint8)).shape == (5, 101)
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 200_000


@pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason=f"the offline CIFAR-10 JPEG archives are not in "
                    f"{CIFAR_JPEG} (../shared/data/cifar10-jpeg, relative to the repository)")
def test_cifar10_cnn_config_model_and_one_epoch() -> None:
    exp = _experiment("cifar10_cnn")
    assert exp.base.data.name == "cifar10"
    assert Path(exp.base.data.data_dir).resolve() == CIFAR_JPEG.parent.resolve()
    # RT-HPO over a BatchNorm net (its HVP route: forward_over_reverse_bn), and a fixed AdamW row
    _epochs(exp, ("rthpo_sgd_mid", "adamw_1e-3"),
            **{"data.train_subset": 256, "data.val_subset": 128, "data.test_subset": 128})
    from ray_rthpo.factories import use_pythonpath

    use_pythonpath([str(CIFAR_CNN)])
    from cifar_cnn_demo.model import build

    model = build((3, 32, 32), 10, **exp.base.model.factory_args)
    assert model(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    assert 200_000 < sum(p.numel() for p in model.parameters()) < 500_000


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"the offline MNIST files are not in {MNIST} "
                    "(../shared/data/MNIST, relative to the repository)")
def test_mnist_lenet_config_model_and_one_epoch() -> None:
    from ray_rthpo.models import LeNet, build_model

    exp = _experiment("mnist_lenet")
    assert exp.base.data.name == "mnist" and exp.base.model.name == "lenet"
    assert isinstance(build_model(exp.base.model, (1, 28, 28), 10), LeNet)
    # its rows are mnist_mlp's: only the model differs
    mlp = _experiment("mnist_mlp")
    assert [s.name for s in exp.strategies] == [s.name for s in mlp.strategies]
    assert exp.base.replace(**{"model.name": "mlp"}) == mlp.base
    _epochs(exp, ("rthpo_sgd_mid", "adamw_1e-3"),
            **{"data.train_subset": 256, "data.val_subset": 128, "data.test_subset": 128})
