"""``rthpo compare`` / ``rthpo run`` end to end on a real local Ray: output folder, table, plots, refusals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from tune_helpers import ETA_SPACE, tiny_experiment

from ray_rthpo import metrics as M
from ray_rthpo.cli import main

pytestmark = pytest.mark.ray


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_compare.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment(
        {"name": "rthpo", "method": "rthpo", "searcher": "random", "num_samples": 2,
         "space": {"lr.eta0": {"loguniform": [0.01, 0.5]}, "lr.beta": {"loguniform": [1.0e-9, 1.0e-1]}}},
        {"name": "exp_skopt", "method": "exp_decay", "searcher": "skopt", "num_samples": 3, "space": ETA_SPACE,
         "searcher_options": {"n_initial_points": 2}},
        budget_s=100.0)))
    return path


def test_compare_writes_table_trials_and_plots(ray_local: None, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config, out = write_config(tmp_path), tmp_path / "out"
    assert main(["compare", str(config), "--output", str(out), "--set", "train.epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert "== [1/2] rthpo" in printed and "[exp_skopt] trial" in printed
    assert "| strategy | method | searcher | best val acc | test acc (chosen by val) |" in printed
    for name in ("summary.md", "trials.csv", "trials.parquet", "best_so_far.png", "lr_trajectories.png",
                 "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "ray" / "rthpo").is_dir() and (out / "ray" / "exp_skopt").is_dir()
    for png in ("best_so_far.png", "lr_trajectories.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    trials = pd.read_csv(out / "trials.csv")
    assert set(trials["strategy"]) == {"rthpo", "exp_skopt"}
    assert trials.groupby("strategy")["trial_id"].nunique().to_dict() == {"rthpo": 2, "exp_skopt": 3}
    assert pd.read_parquet(out / "trials.parquet").shape == trials.shape
    summary = (out / "summary.md").read_text()
    assert "test accuracy is never used to choose" in summary and summary.count("\n| ") == 3
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["base"]["train"]["epochs"] == 2 and resolved["strategies"][1]["searcher"] == "skopt"
    # the reported test accuracy is the one of the best-by-validation epoch of each strategy
    for strategy, group in trials.groupby("strategy"):
        best = group.sort_values([M.VAL_ACC, M.VAL_LOSS], ascending=[False, True]).iloc[0]
        assert f"{best[M.TEST_ACC]:.4f}" in [line.split("|")[5].strip() for line in summary.splitlines()
                                              if line.startswith(f"| {strategy} ")]


def test_an_output_folder_that_holds_an_experiment_is_never_overwritten(
        ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.md").write_text("earlier results")
    assert main(["compare", str(write_config(tmp_path)), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds an experiment" in err and "another --output" in err
    assert (out / "summary.md").read_text() == "earlier results"


def test_run_needs_a_strategy_when_there_are_several_and_runs_one(
        ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert main(["run", str(config), "--output", str(tmp_path / "a")]) == 2
    assert "pick one with --strategy NAME (rthpo, exp_skopt)" in capsys.readouterr().err
    assert main(["run", str(config), "--strategy", "rthpo", "--output", str(tmp_path / "b"),
                 "--set", "strategies.rthpo.num_samples=1"]) == 0
    trials = pd.read_csv(tmp_path / "b" / "trials.csv")
    assert set(trials["strategy"]) == {"rthpo"} and trials["trial_id"].nunique() == 1


def test_config_errors_exit_2_before_ray_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(write_config(tmp_path)), "--set", "budget_s=1e3s"]) == 2
    assert "budget_s must be a number, but got '1e3s'" in capsys.readouterr().err
