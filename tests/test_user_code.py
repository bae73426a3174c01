"""A user's own model, data and loss (``model.factory``, ``data.factory``, ``train.loss``), without Ray:
the trainer uses them, every form of split is read, runs resume exactly, ``rthpo train`` imports them from
the config's folder, and the README's three-line optimizer use runs in the example's plain PyTorch loop."""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from ray_rthpo import metrics as M
from ray_rthpo.cli import main
from ray_rthpo.config import Config, config_from_dict
from ray_rthpo.errors import ConfigError
from ray_rthpo.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tabular"

#: A user module: synthetic 3-class data (returned in every supported form), a model, two losses.
USER_MODULE = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CALLS = []


def _blobs(n, offset):
    g = torch.Generator().manual_seed(offset)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 2, 3, generator=g) + y[:, None, None].float()
    return x, y


def load(seed=0, form="pairs", n_train=90):
    CALLS.append(seed)
    train, val, test = _blobs(n_train, 1), _blobs(30, 2), _blobs(30, 3)
    if form == "pairs":
        return train, val, test
    if form == "datasets":
        return {"train": TensorDataset(*train), "val": TensorDataset(*val), "test": TensorDataset(*test)}
    if form == "loaders":
        return [DataLoader(TensorDataset(*s), batch_size=7, shuffle=True) for s in (train, val, test)]
    if form == "no_val":
        return {"train": train, "val": None, "test": test, "num_classes": 4}
    if form == "numpy":
        return tuple((x.numpy(), y.numpy()) for x, y in (train, val, test))
    raise ValueError(form)


class Net(nn.Module):
    def __init__(self, input_shape, num_classes, width):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1], width), nn.Tanh(),
                                  nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)


def build(input_shape, num_classes, width=16):
    return Net(input_shape, num_classes, width)


def doubled_loss(output, target):
    CALLS.append("loss")
    return 2.0 * nn.functional.cross_entropy(output, target)
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "rthpo_test_user_module.py").write_text(textwrap.dedent(USER_MODULE))
    return str(folder)


def user_config(folder: str, **flat: object) -> Config:
    base = {"data.factory": "rthpo_test_user_module:load", "data.batch_size": 16, "data.val_batch_size": 16,
            "model.factory": "rthpo_test_user_module:build", "model.factory_args": {"width": 16},
            "lr.method": "rthpo", "lr.eta0": 0.05, "lr.beta": 1e-4, "train.epochs": 2,
            "train.pythonpath": [folder]}
    return config_from_dict({**base, **flat})


def test_defaults_name_no_user_code_and_the_flat_config_round_trips() -> None:
    flat = Config().to_flat()
    assert flat["model.factory"] is None and flat["data.factory"] is None and flat["train.loss"] is None
    assert flat["train.pythonpath"] == [] and flat["model.factory_args"] is None
    config = config_from_dict({"model": {"factory": "pkg.mod:build",
                                         "factory_args": {"hidden": 8, "act": "gelu"}}})
    assert config.to_flat()["model.factory_args.hidden"] == 8  # searchable as a run-config key
    assert config_from_dict(config.to_flat()) == config


def test_a_strategy_can_search_a_factory_argument(user_module: str) -> None:
    from ray_rthpo.experiment.config import experiment_from_dict
    from ray_rthpo.tune.trainable import config_from_ray

    base = user_config(user_module).to_dict()
    exp = experiment_from_dict({"base": base, "strategies": [
        {"name": "width", "searcher": "random", "num_samples": 2,
         "space": {"model.factory_args.width": {"choice": [4, 32]}}}]})
    assert exp.space_of("width") == {"model.factory_args.width": ("choice", [4, 32])}
    trial = config_from_ray({**exp.run_config("width").to_flat(), "model.factory_args.width": 4})
    assert trial.model.factory_args == {"width": 4}
    assert Trainer(trial).model.body[1].out_features == 4


@pytest.mark.parametrize("form", ["pairs", "datasets", "loaders", "no_val", "numpy"])
def test_every_split_form_is_read_into_memory(user_module: str, form: str) -> None:
    config = user_config(user_module, **{"data.factory_args": {"form": form}, "data.val_fraction": 0.2})
    trainer = Trainer(config)
    data = trainer.data
    assert data.input_shape == (2, 3) and data.raw_inputs
    assert data.num_classes == (4 if form == "no_val" else 3)
    if form == "no_val":  # carved from the 90 training examples with data.val_fraction and the seed
        assert (len(data.train), len(data.val), len(data.test)) == (72, 18, 30)
    else:
        assert (len(data.train), len(data.val), len(data.test)) == (90, 30, 30)
        if form != "loaders":  # a DataLoader may shuffle: its order does not matter
            x, _ = sys.modules["rthpo_test_user_module"]._blobs(90, 1)
            assert torch.equal(data.train.x.float(), x)
    assert data.train.y.dtype == torch.int64
    result = trainer.run_epoch()
    assert 0.0 <= result[M.VAL_ACC] <= 1.0 and result[M.STATUS] == M.STATUS_RUNNING


def test_the_factory_gets_the_seed_and_the_loss_is_the_users(user_module: str) -> None:
    doubled = Trainer(user_config(user_module,
                                  **{"train.seed": 7, "train.loss": "rthpo_test_user_module:doubled_loss"}))
    calls = sys.modules["rthpo_test_user_module"].CALLS
    assert calls[-2:] == [7, "loss"]  # load(seed=train.seed), then the loss checked once on a few examples
    # same seed: same data, same initial weights
    plain = Trainer(user_config(user_module, **{"train.seed": 7}))
    assert doubled.evaluate(doubled.data.val)[0] == pytest.approx(2 * plain.evaluate(plain.data.val)[0],
                                                                  rel=1e-6)
    before = calls.count("loss")
    doubled.run_epoch()
    assert calls.count("loss") > before + doubled.steps_per_epoch  # training and validation terms use it


def test_a_torch_loss_class_is_instantiated(user_module: str) -> None:
    trainer = Trainer(user_config(user_module, **{"train.loss": "torch.nn:CrossEntropyLoss"}))
    assert isinstance(trainer.loss_fn, torch.nn.CrossEntropyLoss)
    assert trainer.run_epoch()[M.STATUS] == M.STATUS_RUNNING


@pytest.mark.parametrize("method", ["rthpo", "cosine"])
def test_a_user_run_resumes_bit_for_bit(user_module: str, tmp_path: Path, method: str) -> None:
    config = user_config(user_module, **{"lr.method": method, "optim.base": "adamw", "lr.eta0": 0.01,
                                         "lr.beta": 1e-6, "train.epochs": 3})
    whole = Trainer(config)
    for _ in range(3):
        whole.run_epoch()
    first = Trainer(config)
    first.run_epoch()
    first.save(tmp_path / "ckpt.pt")
    # moved: still the run
    resumed = Trainer(config.replace(**{"train.pythonpath": [user_module, str(tmp_path)]}))
    resumed.load(tmp_path / "ckpt.pt")
    while not resumed.done:
        resumed.run_epoch()
    for key in (M.TRAIN_LOSS, M.VAL_LOSS, M.VAL_ACC, M.LR):
        assert [h[key] for h in resumed.history] == [h[key] for h in whole.history], key
    for a, b in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_builtin_mlp_takes_user_data_of_any_shape(user_module: str) -> None:
    config = config_from_dict({"data.factory": "rthpo_test_user_module:load", "model.hidden": [8],
                               "lr.method": "fixed", "train.epochs": 1, "train.pythonpath": [user_module]})
    trainer = Trainer(config)
    assert trainer.run_epoch()[M.STATUS] == M.STATUS_FINISHED


def test_errors_name_the_key_the_value_and_the_fix(user_module: str) -> None:
    with pytest.raises(ConfigError, match=r"model.factory 'rthpo_test_user_module:nope'.*has no "
                                          r"attribute 'nope'"):
        Trainer(user_config(user_module, **{"model.factory": "rthpo_test_user_module:nope"}))
    with pytest.raises(ConfigError, match=r"model.factory .*unexpected keyword argument "
                                          r"'widht'.*factory_args"):
        Trainer(user_config(user_module, **{"model.factory_args": {"widht": 3}}))
    with pytest.raises(ConfigError, match=r"data.factory .* raised ValueError: bogus"):
        Trainer(user_config(user_module, **{"data.factory_args": {"form": "bogus"}}))
    with pytest.raises(ConfigError, match=r"data.factory_args is set .* but data.factory is null"):
        config_from_dict({"data": {"factory_args": {"form": "pairs"}}})
    with pytest.raises(ConfigError, match=r"train.loss must be 'module:function'"):
        config_from_dict({"train": {"loss": "cross_entropy"}})


def test_rthpo_train_imports_the_factories_from_the_configs_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # not the example's folder: only the config file says where the code is
    out = tmp_path / "run"
    assert main(["train", str(EXAMPLE / "train.yaml"), "--set", "train.epochs=2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "on tabular_demo.data:load/tabular_demo.model:build" in printed and "epoch   2" in printed
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["pythonpath"] == [str(tmp_path.resolve()), str(EXAMPLE)]
    assert resolved["train"]["loss"] == "tabular_demo.losses:smoothed_cross_entropy"
    assert main(["train", str(EXAMPLE / "train.yaml"), "--set", "train.epochs=3", "--output", str(out),
                 "--resume"]) == 0
    assert "resumed at epoch 2" in capsys.readouterr().out


def readme_optimizer_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text[text.index("## In your own training loop"):],
                       flags=re.S)[0]
    return [line.split("  #")[0].rstrip() for line in block.strip().splitlines() if line.strip()]


def test_plain_pytorch_example_runs_the_readmes_three_lines(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    lines = readme_optimizer_lines()
    assert len(lines) == 3 and lines[0] == "from ray_rthpo.optim import RTHPO"
    source = [line.strip().split("  #")[0].rstrip()
              for line in (EXAMPLE / "plain_pytorch.py").read_text().splitlines()]
    for line in lines:
        assert line in source, line
    monkeypatch.syspath_prepend(str(EXAMPLE))
    spec = importlib.util.spec_from_file_location("plain_pytorch_example", EXAMPLE / "plain_pytorch.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    result = module.train(epochs=3, seed=0)
    assert result["val_acc"] > 0.85 and result["test_acc"] > 0.85
    assert result["lr"] != 1e-3  # the learning rate moved online
    assert "epoch  3" in capsys.readouterr().out
