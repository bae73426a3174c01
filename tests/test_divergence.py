"""Divergence inside a comparison: trials whose η blows up end as ``diverged`` with finite penalty metrics,
every searcher (grid, random, Optuna TPE, skopt, ASHA) accepts them, the other trials finish, and the
table counts and marks them. On a real local Ray."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tune_helpers import tiny_experiment

from ray_rthpo import metrics as M
from ray_rthpo.cli import main

pytestmark = pytest.mark.ray

#: η̄ from 0.01 (trains) to 1e4 (its loss overflows in the first epoch): some trials diverge, some do not.
WIDE = {"lr.eta0": {"loguniform": [1.0e-2, 1.0e4]}}


def test_diverging_trials_are_marked_and_the_others_finish(ray_local: None, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    experiment = tiny_experiment(
        {"name": "grid", "method": "rthpo", "searcher": "grid", "space": {"lr.eta0": {"grid": [0.1, 1.0e4]}}},
        {"name": "random", "method": "rthpo", "searcher": "random", "num_samples": 3, "space": WIDE},
        {"name": "tpe", "method": "rthpo", "searcher": "optuna_tpe", "num_samples": 3, "space": WIDE,
         "searcher_options": {"n_startup_trials": 2}},
        {"name": "skopt", "method": "rthpo", "searcher": "skopt", "num_samples": 3, "space": WIDE,
         "searcher_options": {"n_initial_points": 2}},
        {"name": "asha", "method": "rthpo", "searcher": "random", "num_samples": 3, "space": WIDE,
         "scheduler": "asha", "asha": {"grace_period": 1, "reduction_factor": 2}},
        budget_s=1000.0)
    experiment["base"] = {**experiment["base"], "model": {"name": "mlp", "hidden": [16]},
                          "lr": {"method": "rthpo", "eta0": 0.1, "beta": 1.0e-3, "eta_max": 1.0e5}}
    config = tmp_path / "diverge.yaml"
    config.write_text(yaml.safe_dump(experiment))
    out = tmp_path / "out"
    assert main(["compare", str(config), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "DIVERGED" in printed and "FAILED" not in printed and "trial error" not in printed
    trials = pd.read_csv(out / "trials.csv")
    assert trials.groupby("strategy")["trial_id"].nunique().to_dict() == {
        "grid": 2, "random": 3, "tpe": 3, "skopt": 3, "asha": 3}  # no trial lost, every searcher went on
    for column in (M.TRAIN_LOSS, M.VAL_LOSS, M.VAL_ACC, M.TEST_ACC, M.LR):  # finite penalty metrics
        assert trials[column].map(lambda v: math.isfinite(float(v))).all(), column
    per_trial = trials.groupby(["strategy", "trial_id"]).agg(
        diverged=(M.DIVERGED, "any"), status=(M.STATUS, "last"), epochs=(M.EPOCH, "max"))
    assert per_trial["diverged"].any() and (~per_trial["diverged"]).any()
    assert (per_trial.loc[per_trial["diverged"], "status"] == M.STATUS_DIVERGED).all()
    grid = trials[trials["strategy"] == "grid"]
    good = grid[grid["config/lr.eta0"] == 0.1]
    assert good[M.EPOCH].max() == 2 and good[M.STATUS].iloc[-1] == M.STATUS_FINISHED  # the other one finished
    assert grid[grid["config/lr.eta0"] == 1.0e4][M.STATUS].iloc[-1] == M.STATUS_DIVERGED
    # the table counts the diverged trials of each strategy, and never chooses a diverged run here
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")}
    header = rows.pop("strategy")
    for strategy, count in per_trial.groupby(level="strategy")["diverged"].sum().items():
        assert rows[strategy][header.index("diverged trials")] == str(int(count)), strategy
    assert "lr.eta0=0.1 (epoch" in rows["grid"][header.index("chosen config")]
    assert "DIVERGED" not in rows["grid"][header.index("chosen config")]
