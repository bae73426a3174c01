"""Several runs in one Tune experiment (ray_rthpo/tune/sequence.py): runs one after the other, each with
its own searcher, space and budget, on trial processes shared by all of them."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from tune_helpers import ETA_SPACE, tiny_experiment

from ray_rthpo import metrics as M
from ray_rthpo.experiment.config import experiment_from_dict
from ray_rthpo.report.selection import compute_spent, latest_reports
from ray_rthpo.tune.compare import run_comparison

pytestmark = pytest.mark.ray


def test_runs_follow_each_other_in_one_experiment_on_shared_trial_processes(ray_local: None,
                                                                          tmp_path: Path) -> None:
    exp = experiment_from_dict(tiny_experiment(
        {"name": "grid", "method": "exp_decay", "searcher": "grid",
         "space": {"lr.eta0": {"grid": [0.1, 0.3]}}},
        # the budget ends it
        {"name": "rand", "method": "exp_decay", "searcher": "random", "space": ETA_SPACE},
        {"name": "skopt", "method": "exp_decay", "searcher": "skopt", "num_samples": 3, "space": ETA_SPACE,
         "searcher_options": {"n_initial_points": 2}},
        # ASHA inside the shared experiment: its scheduler sees this run's trials only
        {"name": "asha", "method": "exp_decay", "searcher": "random", "num_samples": 8, "space": ETA_SPACE,
         "scheduler": "asha", "asha": {"grace_period": 1, "reduction_factor": 2},
         "overrides": {"train.epochs": 4}},
        budget_s=1.5, seeds=2))
    logger_switch = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    result = run_comparison(exp, tmp_path / "out", progress=lambda line: None)
    trials = result.trials
    assert sorted(p.name for p in (tmp_path / "out" / "ray").iterdir()) == ["sequence"]  # one Tune experiment
    # Tune's own per-trial loggers were off for it (trials.csv has every epoch), and are as before after it
    assert not list((tmp_path / "out" / "ray" / "sequence").glob("*/result.json"))
    assert os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS") == logger_switch
    counts = trials.groupby(["strategy", "seed"])["trial_id"].nunique().to_dict()
    assert counts[("grid", 0)] == counts[("grid", 1)] == 2  # every grid point, in each seed
    assert counts[("skopt", 0)] <= 3
    assert trials["trial_id"].nunique() == len(trials.drop_duplicates("trial_id"))
    # runs follow each other: every trial of a run is created before the next run's first (the next run
    # may start beside the last trials of the one before)
    order = [(s, n) for s in (0, 1) for n in ("grid", "rand", "skopt", "asha")]
    created = trials.groupby(["seed", "strategy"], sort=False)["time/started_at"].agg(["min", "max"])
    created = created.loc[order]
    assert (created["min"].to_numpy()[1:] >= created["max"].to_numpy()[:-1]).all(), created
    # both slots work: within the budget-bound run of many short trials, trials run two at a time (Tune
    # removes a process no pending trial needs; short trials then ran one at a time, on one process)
    spans = trials.groupby(["seed", "strategy", "trial_id"]).agg(start=("time/started_at", "min"),
                                                                  end=("time/reported_at", "max"))
    for seed in (0, 1):
        rand = spans.loc[(seed, "rand")]
        assert any(((rand["start"] < row.end) & (row.start < rand["end"])).sum() >= 2
                   for row in rand.itertuples()), rand
    # each run has its own budget: the budget stops 'rand' within one epoch per running trial
    for (strategy, seed), group in trials.groupby(["strategy", "seed"]):
        epoch = group[M.EPOCH_SECONDS].max()
        assert compute_spent(group) < exp.budget_s + exp.max_concurrent * epoch + 1e-9, (strategy, seed)
    assert compute_spent(trials[trials["strategy"] == "rand"]) >= exp.budget_s  # it ran until the budget
    # the trial processes serve every run: far fewer processes than trials
    assert trials["node/pid"].nunique() <= exp.max_concurrent + 2 < trials["trial_id"].nunique()
    assert isinstance(result.summary, pd.DataFrame)
    assert set(result.summary["strategy"]) == {"grid", "rand", "skopt", "asha"}
    # ASHA stopped some of its own trials at a rung (epoch 1 or 2; the budget stopped none: its compute stayed
    # below it), and no trial of the runs without a scheduler
    epochs = latest_reports(trials).groupby(["strategy", "seed", "trial_id"])[M.EPOCH].max()
    for seed in (0, 1):
        asha = trials[(trials["strategy"] == "asha") & (trials["seed"] == seed)]
        assert compute_spent(asha) < exp.budget_s and set(epochs.loc[("asha", seed)]) <= {1, 2, 4}
        asha_epochs = epochs.loc[("asha", seed)]
        assert asha_epochs.min() < 4 and asha_epochs.max() == 4, asha_epochs
        assert (epochs.loc[("grid", seed)] == 2).all() and (epochs.loc[("skopt", seed)] == 2).all()
