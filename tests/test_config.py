"""The strict config loader: defaults, YAML, overrides, flat<->nested, and a table of bad inputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ray_rthpo.config import Config, config_from_dict, load_config
from ray_rthpo.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_config_loads() -> None:
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        if "compare" in path.name:
            continue  # experiment configs have their own schema (ray_rthpo.tune)
        load_config(path)


def test_flat_round_trip_and_replace() -> None:
    cfg = load_config(None, ["lr.beta=1.0e-6", "model.hidden=[64]", "data.name=fake"])
    assert cfg.lr.beta == 1e-6 and cfg.model.hidden == (64,)
    assert config_from_dict(cfg.to_flat()) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(**{"lr.eta0": 0.5}).lr.eta0 == 0.5
    assert Config() == load_config(None)


def test_integers_are_accepted_for_floats_and_yaml_floats_parse(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lr: {eta0: 1, beta: 1.0e-8}\n")
    cfg = load_config(path)
    assert cfg.lr.eta0 == 1.0 and isinstance(cfg.lr.eta0, float) and cfg.lr.beta == 1e-8


def test_numbers_that_yaml_leaves_as_strings_are_read_for_float_fields(tmp_path: Path) -> None:
    """PyYAML reads 1e-8 and 1.0e6 as strings; on the command line and for a float field they are numbers."""
    path = tmp_path / "c.yaml"
    path.write_text("lr: {beta: 1e-8, eta_max: 1.0e6}\n")
    cfg = load_config(path, ["lr.eta0=1e-2"])
    assert (cfg.lr.beta, cfg.lr.eta_max, cfg.lr.eta0) == (1e-8, 1e6, 1e-2)
    assert isinstance(cfg.lr.beta, float)
    with pytest.raises(ConfigError, match=r"train\.epochs must be an integer, but got '1e2'"):
        load_config(None, ["train.epochs=1e2"])  # integers stay strict: 1e2 is not written as one


BAD = [
    ({"lr": {"beta": "1e-8 per step"}}, r"lr\.beta must be a number, but got '1e-8 per step'"),
    ({"lr": {"eta_max": "big"}}, r"lr\.eta_max must be a number, but got 'big'"),
    ({"lr": {"betta": 0.1}}, r"unknown key 'lr\.betta'.*'beta'"),
    ({"lrr": {}}, r"unknown key 'lrr'.*'lr'"),
    ({"lr": {"method": "rthp"}}, r"lr\.method must be one of .* but got 'rthp'.*'rthpo'"),
    ({"model": {"name": "resnet50"}}, r"model\.name must be one of mlp, lenet, resnet18, but got 'resnet50'"),
    ({"data": {"name": "imagenet"}}, r"data\.name must be one of .*'imagenet'"),
    ({"lr": {"eta0": -0.1}}, r"lr\.eta0 must be a finite number > 0, but got -0\.1"),
    ({"lr": {"eta0": 0}}, r"lr\.eta0 must be a finite number > 0, but got 0"),
    ({"lr": {"beta": -1.0}}, r"lr\.beta must be a finite number >= 0, but got -1\.0"),
    ({"lr": {"mu": 1.5}}, r"lr\.mu must be a number in \[0, 1\], but got 1\.5"),
    ({"lr": {"eta0": 5.0, "eta_max": 1.0}}, r"lr\.eta0 .* must not exceed lr\.eta_max"),
    ({"lr": {"hvp": "magic"}}, r"lr\.hvp must be one of"),
    ({"optim": {"momentum": 1.0}}, r"optim\.momentum must be in \[0, 1\)"),
    ({"data": {"batch_size": 0}}, r"data\.batch_size must be an integer >= 1, but got 0"),
    ({"data": {"batch_size": 12.5}}, r"data\.batch_size must be an integer, but got 12\.5"),
    ({"data": {"val_fraction": 1.0}}, r"data\.val_fraction must be in \(0, 1\)"),
    ({"train": {"epochs": "ten"}}, r"train\.epochs must be an integer, but got 'ten'"),
    ({"train": {"device": "tpu"}}, r"train\.device must be one of auto, cpu, cuda"),
    ({"data": {"augment": "yes"}}, r"data\.augment must be true or false, but got 'yes'"),
    ({"lr": None}, r"lr must be a mapping"),
    ({"lr": {"eta0": None}}, r"lr\.eta0 must be a float, but got null"),
    ({"model": {"hidden": 512}}, r"model\.hidden must be a list of int"),
]


@pytest.mark.parametrize("data,pattern", BAD, ids=[p for _, p in BAD])
def test_bad_config_values_fail_with_key_value_and_fix(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert re.search(pattern, message), message
    assert "\n" not in message


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(None, ["lr.beta"])


def test_missing_and_malformed_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)
