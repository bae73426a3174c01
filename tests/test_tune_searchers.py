"""Every outer searcher (and ASHA on top) drives real trials through the runner; the budget ends runs.

Random search is driven by the budget test (many trials), Optuna's TPE by the ASHA case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tune_helpers import ETA_SPACE, tiny_experiment

from ray_rthpo import metrics as M
from ray_rthpo.experiment.config import experiment_from_dict
from ray_rthpo.tune.runner import run_strategy

pytestmark = pytest.mark.ray

STRATEGIES: list[dict[str, Any]] = [
    {"name": "grid", "searcher": "grid", "space": {"lr.eta0": {"grid": [0.03, 0.1, 0.3, 1.0]}}},
    {"name": "gp", "searcher": "optuna_gp", "num_samples": 5, "space": ETA_SPACE,
     "searcher_options": {"n_startup_trials": 2}},
    {"name": "skopt", "searcher": "skopt", "num_samples": 5, "space": ETA_SPACE,
     "searcher_options": {"n_initial_points": 2}},
    {"name": "rthpo_tpe_asha", "method": "rthpo", "searcher": "optuna_tpe", "num_samples": 6,
     "scheduler": "asha", "asha": {"grace_period": 1, "reduction_factor": 2},
     "overrides": {"train.epochs": 4}, "searcher_options": {"n_startup_trials": 2},
     "space": {"lr.eta0": {"loguniform": [1.0e-3, 1.0]}, "lr.beta": {"loguniform": [1.0e-9, 1.0e-1]}}},
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=[s["name"] for s in STRATEGIES])
def test_searcher_drives_at_least_four_trials_inside_its_space(
        ray_local: None, tmp_path: Path, strategy: dict[str, Any]) -> None:
    exp = experiment_from_dict(tiny_experiment(strategy))
    s = exp.strategies[0]
    lines: list[str] = []
    outcome = run_strategy(exp, s, storage_path=str(tmp_path), progress=lines.append)
    table = outcome.table
    assert not outcome.errors, outcome.errors
    trials = table.groupby("trial_id")
    grid_points = 4 if s.searcher == "grid" else 1  # num_samples is passes over the grid
    assert trials.ngroups == exp.num_samples(s) * grid_points >= 4
    eta = trials["searched/lr.eta0"].first()
    low, high = (1.0e-3, 1.0) if "lr.beta" in (s.space or {}) else (1.0e-2, 1.0)
    assert eta.between(low, high).all() and eta.nunique() == trials.ngroups  # distinct points, in range
    assert (table["strategy"] == s.name).all() and (table["searcher"] == s.searcher).all()
    epochs = trials[M.EPOCH].max()
    if s.scheduler == "asha":
        assert epochs.min() < 4 and epochs.max() == 4  # ASHA stopped some trials early, not all
    else:
        assert (epochs == 2).all()
    assert len(lines) == trials.ngroups and all(line.startswith(f"[{s.name}] trial ") for line in lines)
    # one line per trial on the console, each physical line within 120 columns (its tail below it if not)
    assert all(len(part) <= 120 for line in lines for part in line.split("\n")), lines
    assert outcome.wall_s > 0 and Path(outcome.storage).is_dir()


def test_budget_ends_the_experiment_within_one_epoch_per_running_trial(
        ray_local: None, tmp_path: Path) -> None:
    budget = 3.0
    exp = experiment_from_dict(tiny_experiment(
        {"name": "budget", "method": "rthpo", "searcher": "random", "num_samples": 200,
         "space": {"lr.eta0": {"loguniform": [0.01, 0.1]}},
         "overrides": {"train.epochs": 8, "model.hidden": [128], "lr.beta": 1.0e-6}},
        budget_s=budget))
    outcome = run_strategy(exp, exp.strategies[0], storage_path=str(tmp_path), progress=lambda _: None)
    table = outcome.table
    spent = table[M.EPOCH_SECONDS].sum()
    assert 4 <= table["trial_id"].nunique() < 200  # the budget ended it, not num_samples
    eta = table.groupby("trial_id")["searched/lr.eta0"].first()
    assert eta.between(0.01, 0.1).all() and eta.nunique() == len(eta)  # random search, inside its space
    longest_epoch = table[M.EPOCH_SECONDS].max()
    assert budget <= spent <= budget + exp.max_concurrent * longest_epoch, (spent, longest_epoch)
    # each trial's time/total_s is its own sum of epoch seconds: the stopper and the table agree
    last = table.sort_values(M.EPOCH).groupby("trial_id").last()
    assert abs(last[M.TOTAL_SECONDS].sum() - spent) < 1e-6
