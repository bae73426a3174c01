"""RTHPO's settings are declared once (ray_rthpo/optim/settings.py) and mean the same everywhere: the same
words for a bad value from ``RTHPO(...)`` and from ``rthpo train --set lr.KEY=...``, the signature's defaults
are the declared ones, every ``lr.*`` / ``optim.*`` key that is a setting reaches the optimizer the Trainer
builds, and the optimizer refuses what it would otherwise store and ignore."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from ray_rthpo.cli import main
from ray_rthpo.config import RUN_DEFAULTS, load_config, run_default
from ray_rthpo.optim import RTHPO, schedules, settings

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits.yaml")

#: A bad value of every setting that is a run-config key, and what else the two sides need so that this
#: value is the first thing wrong (``extra``: RTHPO keywords; the config gets the same through its keys).
BAD: dict[str, tuple[Any, dict[str, Any]]] = {
    "lr": (-0.1, {}), "beta": (-1.0, {}), "base": ("adam", {}), "mu": (1.5, {"method": "marthe"}),
    "momentum": (1.0, {}), "weight_decay": (-0.01, {}), "betas": ((0.9, 1.0), {}), "eps": (0.0, {}),
    "eta_max": (-1.0, {}), "hypergrad_clip": (0.0, {}), "hyper_update": ("log", {}), "hvp": ("fast", {}),
    "val_mode": ("jvp", {}), "hvp_every": (0, {}), "hvp_batch_fraction": (1.5, {}), "val_every": (0, {}),
    "val_batch_fraction": (0.0, {}), "schedule": ("cosine_x", {}), "warmup": (1.5, {}),
    "beta_horizon": ("linear", {}), "tune_fraction": (0.0, {}), "backoff": (0.5, {}),
    "backoff_rollback": ("yes", {}), "hypergrad_at": ("avg", {}), "average_window": (0.0, {}),
    "agreement_gain": (0.5, {}),
}


def test_every_config_setting_has_a_bad_value_here() -> None:
    assert set(BAD) == set(settings.CONFIG_KEYS.values())


def rthpo_words(name: str, value: Any, extra: dict[str, Any]) -> str:
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError) as info:
        RTHPO(model.parameters(), **{"lr": 0.1, **extra, name: value})
    message = str(info.value)
    assert message.startswith(f"RTHPO: {name} "), message
    return message[len(f"RTHPO: {name} "):]


def cli_words(key: str, value: Any, extra: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> str:
    keys = {name: k for k, name in settings.CONFIG_KEYS.items()} | {"method": "lr.method"}
    args = ["train", DIGITS, "--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"]
    args = [a.replace("...", "").strip() for a in args]
    for name, v in extra.items():
        args += ["--set", f"{keys[name]}={v}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rthpo: error: {key} "), err
    return err[len(f"rthpo: error: {key} "):]


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_setting_gets_the_same_words_from_rthpo_and_from_the_config(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    value, extra = BAD[name]
    key = next(k for k, n in settings.CONFIG_KEYS.items() if n == name)
    words = rthpo_words(name, value, extra)
    config = cli_words(key, list(value) if isinstance(value, tuple) else value, extra, capsys)
    shown = re.escape(repr(value)).replace(r"\(", r"[\[(]").replace(r"\)", r"[\])]")
    assert re.fullmatch(r"must be .*, but got " + shown + r"; .+\.( \(or null: the value of lr\.preset\))?",
                        config), config
    # The same requirement and fix; the value is shown as each side holds it (a YAML list is a tuple there).
    assert config.replace("[0.9, 1.0]", "(0.9, 1.0)").startswith(words), (config, words)


def test_relations_between_settings_get_the_same_words_under_each_side_s_names(
        capsys: pytest.CaptureFixture[str]) -> None:
    words = rthpo_words("momentum", 0.9, {"base": "adamw"})
    config = cli_words("optim.momentum", 0.9, {"base": "adamw"}, capsys)
    assert config == words.replace("base", "optim.base").replace("betas", "optim.betas").replace(
        "set momentum", "set optim.momentum")


def test_the_signature_s_defaults_are_the_declared_ones() -> None:
    signature = inspect.signature(RTHPO.__init__).parameters
    for name, setting in settings.SETTINGS.items():
        declared = setting.default
        shown = signature[name].default
        if isinstance(declared, dict):  # follows base: None in the signature, resolved from base
            assert shown is None, name
        else:
            assert shown == declared, (name, shown, declared)


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_defaults_follow_the_base_as_torch_s_optimizers(base: str) -> None:
    model = torch.nn.Linear(3, 2)
    group = RTHPO(model.parameters(), base=base).param_groups[0]
    torch_opt = (torch.optim.SGD if base == "sgd" else torch.optim.AdamW)(model.parameters())
    assert group["lr"] == torch_opt.param_groups[0]["lr"] == 1e-3
    assert group["weight_decay"] == torch_opt.param_groups[0]["weight_decay"]
    # the base's own default where none is given (settings.BASE_DEFAULTS), as the run config's null
    assert group["backoff_rollback"] == settings.BASE_DEFAULTS[base]["backoff_rollback"]
    config = load_config(None, [f"optim.base={base}", "data.train_subset=64", "train.device=cpu"])
    assert config.lr.backoff_rollback is None


def test_the_run_config_s_defaults_are_rthpo_s_unless_declared_otherwise() -> None:
    for key in settings.CONFIG_KEYS:
        section, name = key.split(".", 1)
        cfg = load_config(None, [])
        value = getattr(getattr(cfg, section), "eta0" if key == "lr.eta0" else name)
        assert value == run_default(key), key
        if key not in RUN_DEFAULTS:
            assert value == settings.default(settings.CONFIG_KEYS[key]), key


#: A value other than the default for every run-config key that is a setting, with what it needs beside it.
REACH: dict[str, tuple[Any, list[str]]] = {
    "lr.eta0": (0.05, []), "lr.beta": (0.37, []), "optim.base": ("adamw", []),
    "lr.mu": (0.42, ["lr.method=marthe"]), "optim.momentum": (0.5, []), "optim.weight_decay": (0.003, []),
    "optim.betas": ([0.8, 0.99], ["optim.base=adamw"]), "optim.eps": (1e-6, ["optim.base=adamw"]),
    "lr.eta_max": (5.0, []), "lr.hypergrad_clip": (3.0, []), "lr.hyper_update": ("additive", []),
    "lr.hvp": ("double_backward", []), "lr.val_mode": ("forward", ["lr.hyper_update=adam_log"]),
    "lr.hvp_every": (3, []), "lr.hvp_batch_fraction": (0.5, []), "lr.val_every": (2, []),
    "lr.val_batch_fraction": (0.5, []), "lr.schedule": ("warmup_linear", []),
    "lr.warmup": (7, ["lr.schedule=warmup_cosine"]), "lr.beta_horizon": ("step", []),
    "lr.tune_fraction": (0.5, []), "lr.backoff": (3.0, []), "lr.backoff_rollback": (False, []),
    "lr.hypergrad_at": ("average", []), "lr.average_window": (0.2, []),
    "lr.agreement_gain": (3.0, []), }


def test_every_config_setting_has_a_value_to_reach_the_optimizer() -> None:
    assert set(REACH) == set(settings.CONFIG_KEYS)


@pytest.mark.parametrize("key", sorted(REACH))
def test_every_setting_of_the_config_reaches_the_optimizer_the_trainer_builds(key: str) -> None:
    from ray_rthpo.training.trainer import Trainer

    value, beside = REACH[key]
    overrides = ["data.train_subset=256", "model.hidden=[8]", "train.epochs=2", "train.device=cpu",
                 *beside,
                 f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().replace('...', '')}"]
    trainer = Trainer(load_config(None, overrides))
    opt = trainer.optimizer
    assert isinstance(opt, RTHPO)
    name = settings.CONFIG_KEYS[key]
    if name == "schedule":
        assert isinstance(opt.schedule, schedules.WarmupLinear)
        assert opt.schedule.total_steps == trainer.steps_per_epoch * 2
    elif name == "warmup":
        assert opt.schedule.warmup == value
    else:
        held = opt.param_groups[0][name]
        assert (tuple(held) if name == "betas" else held) == (tuple(value) if name == "betas" else value), key
    assert opt.param_groups[0]["total_steps"] == trainer.steps_per_epoch * 2


def test_a_misspelt_group_key_is_refused_with_the_setting_it_resembles() -> None:
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"key 'momentun', which is no setting of RTHPO; did you mean "
                                         r"'momentum'"):
        RTHPO([{"params": model.parameters(), "momentun": 0.9}], lr=0.1)


def stepped(model: torch.nn.Module, **kwargs: Any) -> RTHPO:
    opt = RTHPO(model.parameters(), lr=0.1, **kwargs)
    x, y = torch.randn(4, model.in_features), torch.randint(0, 2, (4,))
    for _ in range(2):
        opt.step(lambda: F.cross_entropy(model(x), y), val_closure=lambda: F.cross_entropy(model(x), y))
    return opt


def test_a_state_of_another_model_is_refused_before_anything_loads() -> None:
    state = stepped(torch.nn.Linear(3, 2), momentum=0.9).state_dict()
    other = RTHPO(torch.nn.Linear(4, 2).parameters(), lr=0.2, momentum=0.9)
    with pytest.raises(ValueError, match=r"has shape \(2, 3\), but the parameter has shape \(2, 4\); "
                                         r"the state was saved for another model"):
        other.load_state_dict(state)
    assert other.param_groups[0]["lr"] == 0.2 and other.step_count == 0


@pytest.mark.parametrize(("saved", "own"), [({"base": "sgd"}, {"base": "adamw"}),
                                            ({"method": "rthpo"}, {"method": "hd_val"})])
def test_a_state_of_another_base_or_method_is_refused(saved: dict[str, str], own: dict[str, str]) -> None:
    state = stepped(torch.nn.Linear(3, 2), **saved).state_dict()
    key, value = next(iter(saved.items()))
    with pytest.raises(ValueError, match=rf"saved by RTHPO\({key}='{value}'\), but this optimizer has "
                                         rf"{key}='{own[key]}'; build it with {key}='{value}'"):
        RTHPO(torch.nn.Linear(3, 2).parameters(), lr=0.1, **own).load_state_dict(state)


def test_a_torch_lr_scheduler_on_rthpo_is_warned_about_with_the_fix() -> None:
    model = torch.nn.Linear(3, 2)
    opt = RTHPO(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with pytest.warns(UserWarning, match=r"lr_scheduler is attached .* pass its shape to RTHPO: "
                                         r"RTHPO\(\.\.\., schedule='warmup_cosine'"):
        opt.step(lambda: F.cross_entropy(model(x), y), val_closure=lambda: F.cross_entropy(model(x), y))
    scheduler.step()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per optimizer
        opt.step(lambda: F.cross_entropy(model(x), y), val_closure=lambda: F.cross_entropy(model(x), y))


def test_a_validation_closure_of_another_module_is_refused() -> None:
    model, other = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    opt = RTHPO(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    opt.step(lambda: F.cross_entropy(model(x), y), val_closure=lambda: F.cross_entropy(other(x), y))  # step 0
    with pytest.raises(ValueError, match=r"val_closure's loss does not depend on any parameter this "
                                         r"optimizer trains .* the learning rate would never move"):
        opt.step(lambda: F.cross_entropy(model(x), y), val_closure=lambda: F.cross_entropy(other(x), y))


def test_the_validation_pass_restores_each_layer_s_own_mode() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    model[1].eval()  # frozen BatchNorm inside a model in training mode
    opt = RTHPO(model.parameters(), lr=0.1, model=model)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    for _ in range(2):
        opt.step(lambda: F.cross_entropy(model(x), y), val_closure=lambda: F.cross_entropy(model(x), y))
    assert model.training and model[0].training and not model[1].training


def test_the_argument_table_in_the_docs_is_the_one_the_declarations_generate() -> None:
    text = (REPO / "docs" / "optimizer.md").read_text()
    start, end = settings.TABLE_MARKERS
    block = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert block == settings.markdown_table().strip(), (
        "docs/optimizer.md's argument table is stale: python -m ray_rthpo.optim.settings --write "
        "docs/optimizer.md")
    named = {row.split("`")[1] for row in block.splitlines()[2:]}
    assert named == set(inspect.signature(RTHPO.__init__).parameters) - {"self"}
