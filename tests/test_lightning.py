"""RTHPO under PyTorch Lightning (ray_rthpo/lightning.py, examples/lightning/): the example tunes the
learning rate and lowers the loss; a Trainer takes exactly the steps of a plain RTHPO loop on the same
batches (through Lightning's optimizer wrapper, and on the raw optimizer for the sub-batch settings); the
misuses are refused with the fix. Needs the extra ``lightning`` (skipped without it)."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import logging
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

L = pytest.importorskip("lightning",
                        reason="PyTorch Lightning is not installed: pip install -e '.[lightning]'")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from ray_rthpo.lightning import RTHPOCheck, RTHPOMixin, rthpo_step  # noqa: E402
from ray_rthpo.optim import RTHPO, ModelClosure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12

logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning")


def _trainer(max_steps: int, precision: str = "32-true", **kwargs: Any) -> Any:
    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, precision=precision, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, limit_val_batches=0, **kwargs)


class Net(RTHPOMixin, L.LightningModule):
    """A small MLP (with BatchNorm when asked) whose optimizer settings the test chooses."""

    def __init__(self, settings: dict[str, Any], batchnorm: bool = False, val_loader: Any = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.settings = settings
        norm = [nn.BatchNorm1d(16)] if batchnorm else []
        self.net = nn.Sequential(nn.Linear(6, 16), *norm, nn.Tanh(), nn.Linear(16, 3))
        self.rthpo_val_loader = val_loader
        self.hooked_steps = 0  # steps that went through the precision plugin (its on_before_optimizer_step)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.hooked_steps += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> RTHPO:
        return RTHPO(self.parameters(), **self.settings)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.rthpo_step(batch)


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long())


def _plain_loop(model: nn.Module, settings: dict[str, Any], train: DataLoader, val: DataLoader,
                dtype: torch.dtype) -> RTHPO:
    """The same run without Lightning: RTHPO driven by a plain loop, validation batches drawn lazily."""
    model = model.to(dtype).train()
    opt = RTHPO(model.parameters(), **settings)
    val_batches = itertools.cycle(val)  # the helper restarts the loader the same way (shuffle=False here)

    def next_val() -> tuple[torch.Tensor, torch.Tensor]:
        xv, yv = next(val_batches)
        return xv.to(dtype), yv

    for x, y in itertools.islice(itertools.cycle(train), STEPS):
        opt.step(ModelClosure(model, F.cross_entropy, x.to(dtype), y),
                 val_closure=ModelClosure(model, F.cross_entropy, batch=next_val))
    return opt


SAME_STEPS = {
    # through Lightning's optimizer wrapper (the precision plugin wraps the training closure)
    "sgd_momentum_wrapper": ({"lr": 0.05, "beta": 0.3, "momentum": 0.9}, False),
    "adamw_val_every_2_wrapper": ({"lr": 1e-2, "base": "adamw", "val_every": 2, "val_batch_fraction": 0.5},
                                  False),
    # the raw optimizer: these settings need the training ModelClosure itself
    "adamw_hvp_fraction_raw": ({"lr": 1e-2, "base": "adamw", "hvp_batch_fraction": 0.5}, False),
    "sgd_batchnorm_auto_raw": ({"lr": 0.05, "beta": 0.3}, True),
}


@pytest.mark.parametrize("precision", ["64-true", "32-true"])
@pytest.mark.parametrize("case", list(SAME_STEPS))
def test_lightning_takes_the_plain_loops_steps(case: str, precision: str) -> None:
    settings, batchnorm = SAME_STEPS[case]
    dtype, tol = (torch.float64, 1e-12) if precision == "64-true" else (torch.float32, 1e-6)
    train = DataLoader(_data(64, 1), batch_size=16)  # 4 batches: the 12 steps run 3 epochs
    val = DataLoader(_data(40, 2), batch_size=16)  # 3 batches (the last short): the helper cycles it
    torch.manual_seed(0)
    module = Net(settings, batchnorm=batchnorm, val_loader=val)
    plain_model = copy.deepcopy(module.net)
    trainer = _trainer(STEPS, precision)
    trainer.fit(module, train)
    opt = _plain_loop(plain_model, settings, train, val, dtype)

    assert trainer.global_step == STEPS  # Lightning counted every step (raw path included)
    assert module.hooked_steps == (STEPS if case.endswith("_wrapper") else 0)
    lightning_opt = module.optimizers().optimizer
    assert lightning_opt.step_count == STEPS
    assert lightning_opt.eta != settings["lr"] and lightning_opt.eta == pytest.approx(opt.eta, rel=tol)
    for (name, a), b in zip(module.net.state_dict().items(), plain_model.state_dict().values(), strict=True):
        assert a.dtype == dtype or not a.is_floating_point()
        torch.testing.assert_close(a, b, rtol=0, atol=tol, msg=f"{case} {precision}: {name} differs")


def test_example_tunes_the_learning_rate_and_lowers_the_loss(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("lightning_example", ROOT / "examples/lightning/train.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = example.main(["--max-epochs", "2"])
    out = capsys.readouterr().out
    assert "lr at start: 0.001" in out and "lr at end:" in out
    assert result["steps"] == 2 * 34  # 1,078 training images in batches of 32, two epochs
    assert abs(result["lr_end"] / result["lr_start"] - 1.0) > 0.05, result  # eta moved
    assert result["loss_last_epoch"] < 0.8 * result["loss_first_epoch"], result
    assert result["val_acc"] > 0.5, result


def test_automatic_optimisation_is_refused_with_the_fix() -> None:
    class Auto(Net):
        def __init__(self) -> None:
            super().__init__({"lr": 0.1}, val_loader=DataLoader(_data(16, 2), batch_size=8))
            self.automatic_optimization = True

    with pytest.raises(RuntimeError, match=r"automatic_optimization = False"):  # by rthpo_step
        _trainer(1).fit(Auto(), DataLoader(_data(16, 1), batch_size=8))

    class Plain(L.LightningModule):  # RTHPO under automatic optimisation, without the helper
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(6, 3)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> RTHPO:
            return RTHPO(self.parameters(), lr=0.1)

    # by the callback, at fit start
    with pytest.raises(RuntimeError, match=r"automatic_optimization = False"):
        _trainer(1, callbacks=[RTHPOCheck()]).fit(Plain(), DataLoader(_data(16, 1), batch_size=8))


def test_missing_validation_batches_and_other_optimizers_are_refused() -> None:
    with pytest.raises(ValueError, match=r"needs validation batches.*val_loader="):
        _trainer(2).fit(Net({"lr": 0.1}), DataLoader(_data(32, 1), batch_size=8))
    module = Net({"lr": 0.1, "method": "hd_train"})  # first order on the training gradient: no validation
    _trainer(3).fit(module, DataLoader(_data(32, 1), batch_size=8))
    assert module.optimizers().optimizer.step_count == 3

    class SGDNet(Net):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match=r"needs an RTHPO optimizer, but got SGD"):
        _trainer(1).fit(SGDNet({}), DataLoader(_data(16, 1), batch_size=8))
    with pytest.raises(TypeError, match=r"first argument"):
        rthpo_step(nn.Linear(2, 2), None)  # type: ignore[arg-type]


def test_fp16_loss_scaling_and_several_devices_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.plugins.precision import MixedPrecision

    def fit(**kwargs: Any) -> None:
        module = Net({"lr": 0.1}, val_loader=DataLoader(_data(16, 2), batch_size=8))
        L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, **kwargs).fit(
            module, DataLoader(_data(16, 1), batch_size=8))

    # on CPU Lightning turns precision="16-mixed" into bf16; the plugin itself keeps fp16 and its GradScaler
    with pytest.raises(RuntimeError, match=r"precision='16-mixed'.*use precision='bf16-mixed'"):
        fit(plugins=[MixedPrecision("16-mixed", "cpu")])
    fit(precision="bf16-mixed")  # no scaler: allowed
    monkeypatch.setattr(L.Trainer, "world_size", property(lambda self: 2))  # as under DDP with 2 ranks
    with pytest.raises(RuntimeError, match=r"issue #19.*devices=1"):
        fit()


def test_ray_rthpo_does_not_import_lightning() -> None:
    code = ("import sys, ray_rthpo, ray_rthpo.optim; from ray_rthpo.optim import RTHPO, ModelClosure; "
            "print(sorted(m for m in ('lightning', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
