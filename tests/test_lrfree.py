"""The learning-rate-free optimizers: prodigy (prodigyopt) and schedule_free
(schedulefree.SGDScheduleFree)."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ray_rthpo import metrics as M
from ray_rthpo.config import METHODS, OPTIMIZER_METHODS, Config, config_from_dict, load_config
from ray_rthpo.errors import ConfigError
from ray_rthpo.training.methods import read_lr, refresh_batchnorm_stats
from ray_rthpo.training.trainer import Trainer, run_training

pytest.importorskip("prodigyopt")
pytest.importorskip("schedulefree")

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {M.EPOCH_SECONDS, M.TOTAL_SECONDS, M.TRAIN_SECONDS, M.HYPER_SECONDS, M.EVAL_SECONDS}
LRFREE = {"prodigy": 1.0, "schedule_free": 1.0}  # method -> lr.eta0 (Prodigy's recommended multiplier)


def digits(method: str, *overrides: str) -> Config:
    return load_config(None, ["data.name=digits", "data.batch_size=64", "model.hidden=[32]", "train.epochs=3",
                              "train.device=cpu", f"lr.method={method}", f"lr.eta0={LRFREE[method]}",
                              *overrides])


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def test_methods_are_registered() -> None:
    assert {"prodigy", "schedule_free"} <= set(OPTIMIZER_METHODS) <= set(METHODS)
    with pytest.raises(ConfigError, match=r"lr\.method must be one of .*prodigy, schedule_free, dog, dadapt, "
                                          r"but got 'prodigi'"):
        config_from_dict({"lr": {"method": "prodigi"}})


@pytest.mark.parametrize("method", sorted(LRFREE))
def test_trains_on_digits_and_reports_a_meaningful_lr(method: str) -> None:
    history = run_training(digits(method))
    losses = [row[M.TRAIN_LOSS] for row in history]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.6 * losses[0], losses
    assert history[-1][M.VAL_ACC] > 0.8 and history[-1][M.TEST_ACC] > 0.8, history[-1]  # chance: 0.1
    assert history[-1][M.STATUS] == M.STATUS_FINISHED and not any(row[M.DIVERGED] for row in history)
    for row in history:
        assert math.isfinite(row[M.LR]) and row[M.LR] > 0, row[M.LR]


def test_prodigy_reports_its_effective_step_size_d_times_lr() -> None:
    trainer = Trainer(digits("prodigy", "train.epochs=1", "optim.weight_decay=1.0e-4"))
    result = trainer.run_epoch()
    group = trainer.optimizer.param_groups[0]
    assert type(trainer.optimizer).__name__ == "Prodigy"
    assert group["lr"] == 1.0 and group["weight_decay"] == 1.0e-4
    assert group["d"] > group["d0"]  # d has grown from its tiny start: the step size was found
    assert result[M.LR] == pytest.approx(group["d"] * group["lr"]) == read_lr(trainer.optimizer)


@pytest.mark.parametrize(("momentum", "expected"), [(0.0, 0.9), (0.5, 0.5)])
def test_schedule_free_momentum_and_weight_decay(momentum: float, expected: float) -> None:
    trainer = Trainer(digits("schedule_free", "lr.eta0=0.5", f"optim.momentum={momentum}",
                             "optim.weight_decay=1.0e-4"))
    group = trainer.optimizer.param_groups[0]
    assert type(trainer.optimizer).__name__ == "SGDScheduleFree"
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.5, expected, 1.0e-4)
    assert trainer.run_epoch()[M.LR] == 0.5


def test_schedule_free_evaluates_and_checkpoints_the_averaged_weights() -> None:
    trainer = Trainer(digits("schedule_free", "train.epochs=2"))
    trainer.run_epoch()
    opt = trainer.optimizer
    assert opt.param_groups[0]["train_mode"] is False  # left in eval mode: state_dict() holds x
    x = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer.evaluate(trainer.data.val) == trainer.evaluate(trainer.data.val)  # idempotent
    assert all(torch.equal(p, q) for p, q in zip(trainer.model.parameters(), x, strict=True))
    # x is the average of the iterates: not the training point y (to which train() moves the weights).
    opt.train()
    y = [p.detach().clone() for p in trainer.model.parameters()]
    assert not all(torch.equal(p, q) for p, q in zip(x, y, strict=True))
    opt.eval()
    state = trainer.state_dict()
    assert state["optimizer"]["param_groups"][0]["train_mode"] is False
    for p, q in zip(state["model"].values(), x, strict=True):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.parametrize("overrides", [
    pytest.param(["lr.method=prodigy"], id="prodigy"),
    pytest.param(["lr.method=prodigy", "optim.weight_decay=1.0e-3"], id="prodigy-wd"),
    pytest.param(["lr.method=schedule_free"], id="schedule_free"),
    pytest.param(["lr.method=schedule_free", "optim.momentum=0.8", "optim.weight_decay=1.0e-3",
                  "data.augment=true"], id="schedule_free-momentum-wd-augment"),
])
def test_save_after_two_epochs_and_restore_continues_exactly(tmp_path: Path, overrides: list[str]) -> None:
    method = overrides[0].split("=")[1]
    cfg = digits(method, *overrides[1:])
    straight = Trainer(cfg)
    while not straight.done:
        straight.run_epoch()
    first = Trainer(cfg)
    first.run_epoch()
    first.run_epoch()
    first.save(tmp_path / "ckpt.pt")
    torch.manual_seed(12345)  # the restore must not depend on the global RNG of the new process
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.epoch == 2
    resumed.run_epoch()
    assert resumed.done
    assert without_timing(resumed.history) == without_timing(straight.history)
    for p, q in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(p, q)
    a, b = resumed.optimizer.state_dict(), straight.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for key, state in a["state"].items():
        for name, value in state.items():
            other = b["state"][key][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, name


@pytest.mark.parametrize(("method", "package"),
                         [("prodigy", "prodigyopt"), ("schedule_free", "schedulefree")])
def test_missing_package_is_a_config_error_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch, method: str, package: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    with pytest.raises(ConfigError) as info:
        Trainer(digits(method))
    message = str(info.value)
    assert message == (f"lr.method {method} needs the package {package}; install it with "
                       f"pip install -e '.[lrfree]' (or pip install {package}).")


def test_refresh_batchnorm_stats_is_a_plain_average_and_keeps_the_counter() -> None:
    bn = nn.BatchNorm1d(3)
    model = nn.Sequential(bn)
    model.eval()
    bn.num_batches_tracked.fill_(7)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, generator=g) * 2 + 1 for _ in range(4)]
    refresh_batchnorm_stats(model, iter(batches))
    assert torch.allclose(bn.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, torch.stack([b.var(0) for b in batches]).mean(0), atol=1e-5)
    assert int(bn.num_batches_tracked) == 7 and bn.momentum == 0.1 and not model.training


def test_schedule_free_with_batchnorm_resnet18_on_fake_data(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "cifar100_resnet18.yaml", [
        "data.name=fake", "data.fake_shape=[3,16,16]", "data.fake_train_size=40", "data.fake_test_size=16",
        "data.batch_size=16", "data.val_batch_size=8", "data.eval_batch_size=64", "train.epochs=2",
        "train.device=cpu", "lr.method=schedule_free", "lr.eta0=0.1", "optim.momentum=0.0",
    ])
    straight = Trainer(cfg)
    while not straight.done:
        straight.run_epoch()
    assert int(straight.model.bn1.num_batches_tracked) == 2 * straight.steps_per_epoch
    assert all(math.isfinite(row[M.VAL_LOSS]) for row in straight.history)
    first = Trainer(cfg)
    first.run_epoch()
    first.save(tmp_path / "ckpt.pt")
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ckpt.pt")
    resumed.run_epoch()
    assert without_timing(resumed.history) == without_timing(straight.history)
    for (name, p), q in zip(resumed.model.state_dict().items(), straight.model.state_dict().values(),
                            strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("method", sorted(LRFREE))
def test_compare_strategies_accept_the_methods(method: str) -> None:
    from ray_rthpo.experiment import config as E

    exp = E.experiment_from_dict({
        "base": {"data": {"name": "digits"}, "model": {"hidden": [32]}, "train": {"epochs": 2}},
        "budget_s": 10.0, "strategies": [{"name": "s", "method": method, "searcher": "random",
                        "space": {"lr.eta0": {"loguniform": [0.1, 2.0]}}}],
    })
    assert exp.run_config(exp.strategy("s")).lr.method == method


# ------------------------------------------------------------------ DoG (with its averager), D-Adaptation
pytest.importorskip("dog")
pytest.importorskip("dadaptation")


@pytest.mark.parametrize(("method", "overrides"), [
    ("dog", []), ("dadapt", ["optim.momentum=0.9"]),
    ("dadapt", ["optim.base=adamw", "optim.weight_decay=0.01"]), ("dadapt", ["lr.schedule=warmup_cosine"]),
], ids=["dog", "dadapt_sgd", "dadapt_adam", "dadapt_cosine"])
def test_dog_and_dadapt_train_on_digits_at_their_defaults(method: str, overrides: list[str]) -> None:
    """Their own step sizes start tiny (d0, reps_rel 1e-6) and grow: 8 epochs of 36 steps end far above
    chance (0.1) on validation (DAdaptSGD overshoots with momentum, as without a schedule it may)."""
    config = load_config(None, ["data.name=digits", "data.batch_size=32", "model.hidden=[32]",
                                "train.epochs=8", "train.device=cpu", f"lr.method={method}", "lr.eta0=1.0",
                                *overrides])
    history = run_training(config)
    assert history[-1][M.VAL_ACC] > 0.5 and history[-1][M.STATUS] == M.STATUS_FINISHED, history[-1]
    assert history[-1][M.LR] > 10 * history[0][M.LR] or method == "dadapt", history  # DoG's step size grew
    assert all(math.isfinite(row[M.LR]) and 0 < row[M.LR] < 100 for row in history)
    if "lr.schedule=warmup_cosine" in overrides:  # the multiplier follows the shape: near 0 at the end
        trainer = Trainer(config)
        trainer.run_epoch()
        assert trainer.optimizer.param_groups[0]["lr"] < 1.0


def test_dog_evaluates_and_checkpoints_its_average_and_resumes_exactly() -> None:
    config = load_config(None, ["data.name=digits", "data.batch_size=64", "model.hidden=[32]",
                                "train.epochs=3", "train.device=cpu", "lr.method=dog"])
    trainer = Trainer(config)
    trainer.run_epoch()
    averaged = trainer.method.averager.averaged_model
    assert all(torch.equal(p, q) for p, q in zip(trainer.model.parameters(), averaged.parameters(),
                                                 strict=True))
    training = trainer._train_weights
    assert training is not None and not all(torch.equal(training[k], v)
                                            for k, v in averaged.state_dict().items())
    # as written to a checkpoint file: DoG updates its tensors in place
    state = copy.deepcopy(trainer.state_dict())
    trainer.run_epoch()
    again = Trainer(config)
    again.load_state_dict(state)
    again.run_epoch()
    assert without_timing(again.history) == without_timing(trainer.history)
