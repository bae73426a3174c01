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
        {"name": "exp_skopt", "method": "exp_decay", "searcher": "skopt", "num_samples": 3,
         "space": ETA_SPACE, "searcher_options": {"n_initial_points": 2}},
        budget_s=100.0)))
    return path


def test_compare_writes_table_trials_and_plots(ray_local: None, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config, out = write_config(tmp_path), tmp_path / "out"
    assert main(["compare", str(config), "--output", str(out), "--set", "train.epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert "== [1/2] rthpo" in printed and "[exp_skopt] trial" in printed
    # the closing lines (up to the CLI's "wrote <folder> ..." line, as wide as the folder's name) open with
    # the result, fit 120 columns, hold one table without multi-seed columns
    closing = printed[printed.index("## Result"):printed.index("\nwrote ")].splitlines()
    assert closing[-1].startswith("summary.md has every column")
    assert closing[0] == "## Result" and any(line.startswith("- Best: ") for line in closing)
    assert max(len(line) for line in closing) <= 120, max(closing, key=len)
    assert "| strategy " in printed and "IQM" not in printed and "[n/a]" not in printed
    for name in ("summary.md", "trials.csv", "trials.parquet", "best_so_far.png", "lr_trajectories.png",
                 "config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "ray" / "sequence").is_dir()  # runs without a scheduler share one Tune experiment
    for png in ("best_so_far.png", "lr_trajectories.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    trials = pd.read_csv(out / "trials.csv")
    assert set(trials["strategy"]) == {"rthpo", "exp_skopt"}
    assert trials.groupby("strategy")["trial_id"].nunique().to_dict() == {"rthpo": 2, "exp_skopt": 3}
    assert pd.read_parquet(out / "trials.parquet").shape == trials.shape
    summary = (out / "summary.md").read_text()
    assert "test accuracy is never used to choose" in summary
    assert summary.count("\n| ") == 6  # per strategy (header + 2 rows), then every run (header + 2 rows)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["base"]["train"]["epochs"] == 2 and resolved["strategies"][1]["searcher"] == "skopt"
    assert summary.startswith("# ") and summary.splitlines()[2] == "## Result"  # opens with the result
    # the reported test accuracy is the one of the best-by-validation epoch of each strategy (every-run table)
    runs = summary[summary.index("## Every run"):].splitlines()
    column = [c.strip() for c in runs[2].split("|")].index("test acc (chosen by val)")
    for strategy, group in trials.groupby("strategy"):
        best = group.sort_values([M.VAL_ACC, M.VAL_LOSS], ascending=[False, True]).iloc[0]
        assert f"{best[M.TEST_ACC]:.4f}" in [line.split("|")[column].strip() for line in runs
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


@pytest.mark.ray
def test_seeds_repeat_every_strategy_paired_with_statistics_an_untuned_run_and_resume_per_seed(
        ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment(
        {"name": "rthpo_default", "method": "rthpo", "searcher": "none", "overrides": {"lr.eta0": 0.1}},
        {"name": "exp_rand", "method": "exp_decay", "searcher": "random", "num_samples": 2,
         "space": ETA_SPACE},
        budget_s=100.0, target_val_acc=0.5)))
    out = tmp_path / "out"
    assert main(["compare", str(path), "--output", str(out), "--seeds", "2"]) == 0
    trials = pd.read_csv(out / "trials.csv")
    runs = trials.groupby(["strategy", "seed"])["trial_id"].nunique().to_dict()
    assert runs == {("rthpo_default", 0): 1, ("rthpo_default", 1): 1, ("exp_rand", 0): 2, ("exp_rand", 1): 2}
    assert trials["trial_id"].nunique() == 6  # trial ids never repeat across seeds
    untuned = trials[trials["strategy"] == "rthpo_default"].sort_values(["seed", M.EPOCH])
    first, second = (untuned[untuned["seed"] == s][M.VAL_LOSS].tolist() for s in (0, 1))
    assert first != second  # repetition 1 trains with train.seed + 1
    summary = (out / "summary.md").read_text()
    assert "## Per strategy, over seeds" in summary and "## Compute to reach the target" in summary
    assert "| rthpo_default | rthpo | none | 2 |" in summary
    assert "| exp_rand | exp_decay | random | 2 |" in summary
    assert summary.count("2 of 2") >= 2  # both strategies reach val/acc 0.5 in both seeds
    assert "| rthpo_default | 1 | rthpo | none |" in summary and "no search (epoch" in summary
    names = sorted(p.name for p in (out / "progress").glob("*.done.json"))
    assert names == sorted(f"{s}-seed{k}.done.json" for s in ("rthpo_default", "exp_rand") for k in (0, 1))
    assert (out / "best_so_far.png").read_bytes()[:4] == b"\x89PNG"
    # resume works per (strategy, seed): only the run whose completion is missing runs again
    (out / "progress" / "exp_rand-seed1.done.json").unlink()
    capsys.readouterr()
    assert main(["compare", str(path), "--output", str(out), "--seeds", "2", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before the interruption") == 3 and "== [4/4] exp_rand-seed1:" in printed
    again = pd.read_csv(out / "trials.csv")
    assert again.groupby(["strategy", "seed"])["trial_id"].nunique().to_dict() == runs
