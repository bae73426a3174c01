"""Table 1 workloads: every shipped config loads and builds both experiments, bad values are refused with
the fix before Ray starts, and ``experiments/table1.py`` produces every row on a real local Ray (digits)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from script_runner import run_script

from ray_rthpo.cli import main
from ray_rthpo.errors import ConfigError
from ray_rthpo.table1.config import (
    EQUAL_COMPUTE_STRATEGIES,
    ROWS,
    SEARCH_STRATEGIES,
    load_table1,
    table1_experiments,
)

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ["mlp_mnist", "lenet_mnist", "resnet18_cifar10", "resnet18_cifar100"]
MODELS = {"mlp_mnist": ("mnist", "mlp"), "lenet_mnist": ("mnist", "lenet"),
          "resnet18_cifar10": ("cifar10", "resnet18"), "resnet18_cifar100": ("cifar100", "resnet18")}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_shipped_workloads_follow_the_paper(workload: str) -> None:
    cfg = load_table1(ROOT / "configs" / "table1" / f"{workload}.yaml")
    assert (cfg.base.data.name, cfg.base.model.name) == MODELS[workload]
    # the paper's setting: vanilla SGD, no momentum, no weight decay (no dropout: the models have none)
    assert cfg.base.optim.momentum == 0.0 and cfg.base.optim.weight_decay == 0.0
    # grids span at least 3 decades each (robustness is measured, not assumed)
    assert math.log10(cfg.eta0_grid[-1] / cfg.eta0_grid[0]) >= 3
    assert math.log10(cfg.beta_grid[-1] / cfg.beta_grid[0]) >= 3
    assert {"RT-HPO", "First-order (Train)", "First-order (Val)", "Grid Search", "AdaDelta"} <= set(cfg.paper)
    search, equal = table1_experiments(cfg, reference_run_s=60.0)
    assert [s.name for s in search.strategies] == list(SEARCH_STRATEGIES)
    assert [s.name for s in equal.strategies] == list(EQUAL_COMPUTE_STRATEGIES)
    assert equal.budget_s == 60.0
    grid = search.space_of(search.strategy("rthpo"))
    assert (grid["lr.eta0"] == ("grid", list(cfg.eta0_grid))
            and grid["lr.beta"] == ("grid", list(cfg.beta_grid)))
    assert search.run_config(search.strategy("grid")).lr.method == cfg.grid_method
    assert search.run_config(search.strategy("adadelta")).lr.eta0 == 1.0  # AdaDelta's default
    assert {s.strategy for s in ROWS} == set(SEARCH_STRATEGIES) | set(EQUAL_COMPUTE_STRATEGIES)


def test_overrides_reach_the_run_config_and_the_workload() -> None:
    cfg = load_table1(ROOT / "configs" / "table1" / "resnet18_cifar10.yaml",
                      ["train.epochs=1", "data.test_subset=100", "resources.cpu=1", "bo_trials=3"])
    assert (cfg.epochs == 1 and cfg.base.data.test_subset == 100 and cfg.resources.cpu == 1
            and cfg.bo_trials == 3)


@pytest.mark.parametrize("override,match", [
    ("bogus=1", r"unknown key 'bogus'"),
    ("eta0_grid=[0.1, 0.01]", r"eta0_grid must hold at least 2 increasing numbers"),
    ("beta_grid=[1e-4, tiny]", r"beta_grid\[1\] must be a number, but got 'tiny'"),
    ("bo_trials=1", r"bo_trials must be an integer >= 2"),
    ("grid_method=rthpo", r"grid_method"),
    ("train.epochs=1", r"pbt.perturbation_interval is 2 epochs, but train.epochs is 1"),
])
def test_bad_workload_values_are_refused_up_front(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg = load_table1(ROOT / "configs" / "table1" / "resnet18_cifar10.yaml", [override])
        table1_experiments(cfg, reference_run_s=1.0)


def test_unknown_workload_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table1", "--workload", "vgg_imagenet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mlp_mnist" in err and "Traceback" not in err


DIGITS_WORKLOAD = {
    "workload": "MLP on digits (test)",
    "base": {"data": {"name": "digits", "batch_size": 64, "val_batch_size": 64},
             "model": {"name": "mlp", "hidden": [32]}, "lr": {"method": "rthpo", "eta0": 0.1, "beta": 1.0e-4},
             "train": {"epochs": 2, "seed": 0}},
    "eta0_grid": [0.03, 0.3], "beta_grid": [1.0e-5, 1.0e-2], "bo_trials": 2, "pbt_population": 2,
    "equal_compute_epochs": 3, "resources": {"cpu": 1}, "max_concurrent": 2,
    "paper": {"RT-HPO": {"fixed_eta": "98.42 ± 0.08", "fixed_beta": "98.30 ± 0.01", "top": "98.49",
                         "time": "14"}},
}


@pytest.mark.ray
def test_table1_script_produces_every_row(ray_local: None, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The documented command, run in this process on the session's Ray (tests/script_runner.py): every row
    has numbers that come from the runs, and the files the docs are built from are written."""
    config = tmp_path / "digits.yaml"
    config.write_text(yaml.safe_dump(DIGITS_WORKLOAD, allow_unicode=True))
    out = tmp_path / "out"
    rc = run_script(ROOT / "experiments" / "table1.py",
                    ["--workload", str(config), "--output", str(out), "--num-cpus", "2"])
    assert rc == 0, capsys.readouterr().out[-3000:]
    for name in ("table1.md", "table1.csv", "runs.csv", "table1.json", "sensitivity.png",
                 "accuracy_vs_compute.png", "eta_schedules.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "table1.csv").set_index("label")
    assert list(table.index) == [s.label for s in ROWS]
    assert table["top"].notna().all() and table["time_min"].gt(0).all()
    for label in ("First-order (Train)", "First-order (Val)", "RT-HPO"):
        assert table.loc[label, "runs"] == 4 and table.loc[label, "fixed_eta_n"] == 2
        assert table.loc[label, "fixed_beta_n"] == 2
    assert table.loc["Grid Search", "runs"] == 2 and table.loc["BO (Optuna TPE)", "runs"] == 2
    runs = pd.read_csv(out / "runs.csv")
    rthpo = runs[runs["strategy"] == "rthpo"]
    best = rthpo.sort_values(["val/acc", "val/loss"], ascending=[False, True]).iloc[0]
    assert table.loc["RT-HPO", "top"] == pytest.approx(100 * best["test/acc"])  # Top: chosen on validation
    meta = json.loads((out / "table1.json").read_text())
    # the equal-compute rows ran under the mean compute of one RT-HPO run
    assert meta["reference_run_s"] == pytest.approx(rthpo["compute_s"].mean())
    markdown = (out / "table1.md").read_text()
    assert "**Paper**" in markdown and "98.42 ± 0.08" in markdown and "2 epoch(s) per run" in markdown
