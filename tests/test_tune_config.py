"""Experiment configs, search spaces and searcher factories (no Ray cluster is started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_rthpo.config import Config, load_config
from ray_rthpo.errors import ConfigError
from ray_rthpo.experiment import config as E
from ray_rthpo.experiment import spaces
from ray_rthpo.experiment.searchers import SEARCHERS
from ray_rthpo.tune.searchers import build_searcher, is_basic, to_domain

REPO = Path(__file__).resolve().parents[1]
BASE = {"data": {"name": "digits"}, "model": {"hidden": [32]}, "train": {"epochs": 2}}


def experiment(**strategy: Any) -> dict[str, Any]:
    return {"base": BASE, "budget_s": 10.0, "strategies": [{"name": "s", **strategy}]}


# ------------------------------------------------------------------------------------------ spaces
def test_space_kinds_become_ray_domains() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    checked = spaces.check_space({
        "lr.eta0": {"loguniform": [1.0e-4, 1.0]}, "lr.beta": {"uniform": [0.0, 1.0e-3]},
        "train.seed": {"randint": [0, 5]}, "lr.mu": {"choice": [0.0, 1.0]}, "lr.gamma": {"grid": [0.5, 0.9]},
    }, Config())
    space = {key: to_domain(kind, values) for key, (kind, values) in checked.items()}
    assert isinstance(space["lr.eta0"], Float) and space["lr.eta0"].lower == 1.0e-4
    assert isinstance(space["train.seed"], Integer) and isinstance(space["lr.mu"], Categorical)
    assert space["lr.gamma"] == {"grid_search": [0.5, 0.9]}


SPACE_ERRORS = [
    ({"lr.eta": {"loguniform": [0.1, 1.0]}}, r"unknown key 'lr\.eta'; did you mean 'lr\.eta0'"),
    ({"lr.eta0": {"logunifrom": [0.1, 1.0]}}, r"unknown kind 'logunifrom'"),
    ({"lr.eta0": {"loguniform": [0.0, 1.0]}}, r"loguniform needs low > 0"),
    ({"lr.eta0": {"loguniform": ["1e-4x", 1.0]}}, r"bounds must be numbers, but got '1e-4x'"),
    ({"lr.eta0": {"uniform": [1.0, 0.1]}}, r"low < high"),
    ({"lr.eta0": {"uniform": [0.1]}}, r"needs \[low, high\]"),
    ({"lr.eta0": {"grid": []}}, r"grid needs"),
    ({"lr.eta0": [0.1, 1.0]}, r"must be a mapping with one of"),
    ({"lr.eta0": {"loguniform": [0.1, 100.0]}}, r"space\.lr\.eta0: the value 100\.0 .*lr\.eta_max.*narrow"),
    ({"train.seed": {"randint": [0.5, 3]}}, r"randint bounds must be integers"),
]


@pytest.mark.parametrize(("space", "match"), SPACE_ERRORS)
def test_bad_spaces_name_the_key_and_the_fix(space: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        spaces.check_space(space, Config())


# --------------------------------------------------------------------------------------- searchers
@pytest.mark.parametrize("name", SEARCHERS)
def test_every_searcher_builds_seeded(name: str) -> None:
    searcher = build_searcher(name, seed=3, max_concurrent=2)
    assert searcher is not None
    assert is_basic(searcher) == (name in ("none", "grid", "random"))


def test_optuna_gp_uses_optunas_gp_sampler() -> None:
    import optuna

    searcher = build_searcher("optuna_gp", seed=0, options={"n_startup_trials": 3})
    assert isinstance(searcher._sampler, optuna.samplers.GPSampler)
    tpe = build_searcher("optuna_tpe", seed=0)
    assert isinstance(tpe._sampler, optuna.samplers.TPESampler)


EXPERIMENT_ERRORS = [
    (dict(searcher="grdi"), r"searcher must be one of .* Did you mean 'grid'"),
    (dict(searcher="grid", space={"lr.eta0": {"loguniform": [0.01, 1.0]}}), r"searcher grid enumerates"),
    (dict(searcher="optuna_tpe", space={"lr.eta0": {"grid": [0.01, 1.0]}}), r"cannot take \{grid"),
    (dict(searcher="skopt"), r"searcher skopt needs a space"),
    (dict(searcher="optuna_tpe", searcher_options={"n_startup": 2},
          space={"lr.eta0": {"uniform": [0.1, 1.0]}}),
     r"not known to searcher optuna_tpe; it accepts: n_startup_trials"),
    (dict(method="fixed", space={"lr.beta": {"loguniform": [1.0e-6, 1.0e-2]}}),
     r"lr\.beta has no effect with lr\.method fixed"),
    (dict(method="rhtpo"), r"method must be one of .* Did you mean 'rthpo'"),
    (dict(scheduler="hyperband"), r"scheduler must be one of fifo, asha"),
    (dict(name="a b"), r"name must be letters"),
    (dict(overrides={"train.epoch": 3}), r"overrides: unknown key 'train\.epoch'"),
    (dict(asha={"reduction_factor": 1}), r"asha\.reduction_factor must be > 1"),
]


@pytest.mark.parametrize(("strategy", "match"), EXPERIMENT_ERRORS)
def test_bad_strategies_fail_with_the_fix(strategy: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        E.experiment_from_dict(experiment(**strategy))


#: A strategy's own checks name it once, as their whole message (not behind a list index, as in
#: 'strategies[0].strategy s: ...').
WHOLE_MESSAGES = [
    (dict(space=3), r"^strategy s: space must be a mapping, but got 3\.$"),
    (dict(name="a b"), r"^strategies\[\]\.name must be letters"),
    (dict(num_samples=0), r"^strategy s: num_samples must be null or an integer >= 1"),
]


@pytest.mark.parametrize(("strategy", "match"), WHOLE_MESSAGES)
def test_a_strategys_own_errors_read_as_written(strategy: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        E.experiment_from_dict(experiment(**strategy))


TOP_ERRORS = [
    ({"budget_s": 0}, r"budget_s must be a finite number of seconds > 0"),
    ({"budget_s": "1e3s"}, r"budget_s must be a number, but got '1e3s'"),
    ({"metric": "test/acc"}, r"metric is always 'val/acc'"),
    ({"resources": {"gpu": 1.5}}, r"whole number of GPUs"),
    ({"resources": {"cpu": 0}}, r"must ask for some cpu or gpu"),
    ({"budget": 10}, r"unknown key 'budget'; did you mean 'budget_s'"),
    ({"strategies": []}, r"strategies is empty"),
    ({"strategies": [{"name": "a"}, {"name": "a"}]}, r"unique.*\['a'\]"),
    ({"base": {"lr": {"eta0": -1.0}}}, r"lr\.eta0 must be a finite number > 0"),
]


@pytest.mark.parametrize(("top", "match"), TOP_ERRORS)
def test_bad_experiments_fail_with_the_fix(top: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        E.experiment_from_dict({**experiment(), **top})


def test_strategy_run_config_applies_method_and_overrides_and_defaults_num_samples() -> None:
    exp = E.experiment_from_dict({"base": BASE, "strategies": [
        {"name": "g", "method": "exp_decay", "searcher": "grid", "space": {"lr.gamma": {"grid": [0.5, 0.9]}},
         "overrides": {"train": {"epochs": 3}, "lr.eta0": 0.2}},
        {"name": "r", "searcher": "random", "space": {"lr.eta0": {"loguniform": [0.01, 1.0]}}},
        {"name": "one"},
    ]})
    g = exp.run_config(exp.strategy("g"))
    assert (g.lr.method, g.train.epochs, g.lr.eta0) == ("exp_decay", 3, 0.2)
    assert [exp.num_samples(s) for s in exp.strategies] == [1, E.DEFAULT_MAX_SAMPLES, 1]
    with pytest.raises(ConfigError, match="no strategy 'x'; this experiment has: g, r, one"):
        exp.strategy("x")


def test_overrides_reach_base_strategies_and_top_level(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(searcher="random",
                                              space={"lr.eta0": {"loguniform": [0.01, 1.0]}})))
    exp = E.load_experiment(path, ["train.epochs=4", "budget_s=33", "resources.cpu=0.5",
                                   "strategies.s.num_samples=7",
                                   "strategies.s.space.lr.eta0={loguniform: [1.0e-3, 0.1]}"])
    assert exp.base.train.epochs == 4 and exp.budget_s == 33 and exp.resources.cpu == 0.5
    assert exp.name == "exp" and exp.strategies[0].num_samples == 7
    assert exp.space_of(exp.strategies[0])["lr.eta0"] == ("loguniform", [1.0e-3, 0.1])
    with pytest.raises(ConfigError, match="strategies.NAME.FIELD=value with NAME one of: s"):
        E.load_experiment(path, ["strategies.t.num_samples=1"])
    replaced = E.load_experiment(path, ["resources.custom={slot: 1}", "resources.custom={}",
                                        "strategies.s.asha.grace_period=2",
                                        "strategies.s.overrides.train.epochs=5"])
    assert replaced.resources.custom == {} and replaced.strategies[0].asha.grace_period == 2
    assert replaced.run_config(replaced.strategies[0]).train.epochs == 5


def test_a_plain_run_config_is_a_one_trial_experiment(tmp_path: Path) -> None:
    exp = E.load_experiment(REPO / "configs" / "digits.yaml", ["lr.method=hd_val"])
    assert [s.name for s in exp.strategies] == ["hd_val"]
    assert exp.num_samples(exp.strategies[0]) == 1 and exp.base.lr.method == "hd_val"


def test_base_can_be_a_path_relative_to_the_experiment_file(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"data": {"name": "digits"}, "train": {"epochs": 3}}))
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"base": "run.yaml", "strategies": [{"name": "a"}]}))
    assert E.load_experiment(tmp_path / "exp.yaml").base.train.epochs == 3


def test_data_dir_is_made_absolute_against_the_command_directory(tmp_path: Path) -> None:
    exp = E.experiment_from_dict({"base": {"data": {"name": "mnist", "data_dir": "../shared/data"}},
                                  "strategies": [{"name": "a"}]}, cwd=tmp_path / "repo")
    assert exp.base.data.data_dir == str((tmp_path / "shared" / "data").resolve())
    digits = E.experiment_from_dict({"base": BASE, "strategies": [
        {"name": "a"}, {"name": "b", "overrides": {"data": {"data_dir": "here"}}}]}, cwd=tmp_path)
    assert digits.base.data.data_dir is None
    assert digits.run_config(digits.strategy("b")).data.data_dir == str(tmp_path.resolve() / "here")


def test_null_data_dir_finds_the_shared_copy_when_there_is_one() -> None:
    shared = REPO.parent / "shared" / "data" / "MNIST"
    if not shared.is_dir():
        pytest.skip("no ../shared/data/MNIST on this machine")
    exp = E.experiment_from_dict({"base": {"data": {"name": "mnist"}},
                                  "strategies": [{"name": "a"}]}, cwd=REPO)
    assert Path(exp.base.data.data_dir) in (shared.parent.resolve(), Path.home() / ".cache/ray_rthpo/data")


@pytest.mark.parametrize("name", ["compare_digits", "compare_mnist_mlp", "compare_mnist_lenet",
                                  "compare_cifar10_resnet18", "compare_cifar100_resnet18"])
def test_shipped_compare_configs_load(name: str) -> None:
    exp = E.load_experiment(REPO / "configs" / f"{name}.yaml", cwd=REPO)
    assert exp.strategies and exp.budget_s > 0
    assert {s.searcher for s in exp.strategies} >= {"grid", "random", "skopt"}
    assert any(s.searcher.startswith("optuna") for s in exp.strategies)
    to_yaml = yaml.safe_dump(exp.to_dict(), sort_keys=False)
    assert "strategies" in to_yaml
    # one untuned run of RT-HPO's defaults, and the hypergradient searches over the scale-free rule's range
    default = exp.resolved(exp.strategy("rthpo_default"))
    assert default.strategy.searcher == "none" and default.space == {} and default.num_samples == 1
    defaults, lr = Config().lr, default.config.lr
    keys = ("hyper_update", "beta", "beta_horizon", "preset", "tune_fraction", "backoff", "hvp_every",
            "val_every")
    assert lr.method == "rthpo" and lr.schedule == "warmup_cosine"  # the defaults on the usual schedule
    assert {k: getattr(lr, k) for k in keys} == {k: getattr(defaults, k) for k in keys}, name
    for name in ("rthpo", "hd_train", "hd_val"):
        resolved = exp.resolved(exp.strategy(name))
        assert resolved.config.lr.hyper_update == "multiplicative", name
        # per sqrt(T)
        assert resolved.space["lr.beta"] == ("loguniform", [1.0e-1, 10.0]), (name, resolved.space)


def test_the_default_rule_and_beta_are_the_ones_docs_beta_chose() -> None:
    """lr.hyper_update defaults to docs/beta.md's choice; beta is per step for the optimizer (docs/beta.md's
    0.1) and per sqrt(T) steps for run configs (docs/horizon.md: beta 1 with lr.beta_horizon sqrt, the same
    0.1 per step at 100 steps); the paper's additive rule is what the Table 1 workloads name."""
    import torch

    from ray_rthpo.hypergrad.hyper_updates import DEFAULT_BETA, DEFAULT_HYPER_UPDATE
    from ray_rthpo.optim import RTHPO

    assert (DEFAULT_HYPER_UPDATE, DEFAULT_BETA["multiplicative"]) == ("multiplicative", 0.1)
    lr = Config().lr
    assert (lr.hyper_update, lr.beta, lr.beta_horizon) == ("multiplicative", 1.0, "sqrt")
    group = RTHPO([torch.nn.Parameter(torch.zeros(2))]).param_groups[0]
    assert (group["hyper_update"], group["beta"]) == ("multiplicative", 0.1)
    assert "`lr.hyper_update: multiplicative` with `lr.beta: 1e-1`" in (REPO / "docs" / "beta.md").read_text()
    for name in ("mnist_mlp", "mnist_lenet", "cifar10_resnet18", "cifar100_resnet18"):
        assert load_config(REPO / "configs" / f"{name}.yaml").lr.hyper_update == "additive", name


def test_a_missing_dataset_fails_before_ray_starts(tmp_path: Path) -> None:
    from ray_rthpo.data.paths import check_data
    from ray_rthpo.errors import DataError

    config = Config().replace(**{"data.name": "mnist", "data.data_dir": str(tmp_path)})
    with pytest.raises(DataError, match=r"mnist not found in data.data_dir .*--set data.data_dir="):
        check_data(config)
    check_data(config.replace(**{"data.download": True}))  # torchvision may fetch it: not refused
    check_data(Config())  # digits ships with scikit-learn


def test_ray_storage_is_in_the_output_folder_or_under_storage_path(tmp_path: Path) -> None:
    from ray_rthpo.experiment.output import ray_storage

    exp = E.experiment_from_dict(experiment())
    assert ray_storage(exp, tmp_path / "out") == str((tmp_path / "out" / "ray").resolve())
    s3 = E.experiment_from_dict({**experiment(), "storage_path": "s3://bucket/rthpo/"})
    assert ray_storage(s3, tmp_path / "cifar") == "s3://bucket/rthpo/cifar"
    nfs = E.experiment_from_dict({**experiment(), "storage_path": str(tmp_path / "nfs")})
    assert ray_storage(nfs, tmp_path / "cifar") == str(tmp_path / "nfs" / "cifar")


def test_restored_run_config_reaches_rays_private_tuner_or_fails_loudly() -> None:
    """``--resume`` swaps the live stopper and journal into a restored Tuner through Ray's private
    ``Tuner._local_tuner``: this fails with the function's own message if a Ray upgrade removes it."""
    from ray import tune

    from ray_rthpo.tune.runner import restored_run_config

    tuner = tune.Tuner(lambda config: None,
                       run_config=tune.RunConfig(name="probe", storage_path="/tmp/rthpo-probe"))
    run_config = restored_run_config(tuner)
    assert isinstance(run_config, tune.RunConfig) and run_config.name == "probe"
    run_config.stop = marker = object()
    assert restored_run_config(tuner).stop is marker  # the object Tune will run with, changed in place
    with pytest.raises(RuntimeError, match=r"Tuner\._local_tuner\.get_run_config\(\).*--resume"):
        restored_run_config(object())


def test_skopt_base_estimators_that_do_not_run_are_refused_with_the_config() -> None:
    with pytest.raises(ConfigError, match=r"base_estimator must be one of GP, RF, ET, but got 'GBRT'"):
        E.experiment_from_dict(experiment(searcher="skopt", space={"lr.eta0": {"loguniform": [0.01, 1.0]}},
                                          searcher_options={"base_estimator": "GBRT"}))


def test_searcher_none_is_one_run_of_the_config_values_per_seed() -> None:
    exp = E.experiment_from_dict({**experiment(searcher="none", overrides={"lr.eta0": 0.2}), "seeds": 3})
    resolved = exp.resolved("s")
    assert resolved.num_samples == 1 and resolved.space == {} and resolved.config.lr.eta0 == 0.2
    assert exp.repetitions() == [0, 1, 2] and exp.run_name("s", 2) == "s-seed2"
    with pytest.raises(ConfigError, match=r"searcher none runs the config's own values .* remove the space"):
        E.experiment_from_dict(experiment(searcher="none", space={"lr.eta0": {"loguniform": [0.01, 1.0]}}))
    with pytest.raises(ConfigError, match=r"searcher none is one run per repetition, but num_samples is 4"):
        E.experiment_from_dict(experiment(searcher="none", num_samples=4))
    with pytest.raises(ConfigError, match=r"seeds must be an integer >= 1"):
        E.experiment_from_dict({**experiment(searcher="none"), "seeds": 0})
    with pytest.raises(ConfigError, match=r"target_val_acc must be a validation accuracy in \(0, 1\] "
                                          r"\(0.95, not 95\)"):
        E.experiment_from_dict({**experiment(searcher="none"), "target_val_acc": 95})
