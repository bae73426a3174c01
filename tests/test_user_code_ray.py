"""A user's own model and data in Ray Tune, on the session's local Ray: the example's plain Tune trainable
(RTHPO + SkOptSearch + ComputeBudgetStopper), ``rthpo compare`` on the example's config, and trials that
import a user module found only through the config file's folder (``train.pythonpath``)."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from ray_rthpo import metrics as M
from ray_rthpo.cli import main

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tabular"


def test_plain_tune_trainable_with_rthpo_skopt_and_the_budget(ray_local: None, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # the example's folder on the driver's path, as `python examples/tabular/tune_trainable.py` has it; the
    # session Ray's workers have it on their PYTHONPATH (conftest), as a user's local Ray would
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import tune_trainable
    from tabular_demo.model import build

    from ray_rthpo.optim import RTHPO

    grid = tune_trainable.run(str(tmp_path), budget_s=1.0, epochs=2, num_samples=2, name="example")
    assert not grid.errors, grid.errors
    # a trial stopped before its first report: no row
    frame = grid.get_dataframe().dropna(subset=["time/total_s"])
    assert 1 <= len(frame) <= 2
    # the trials ran to the end, or the stopper ended them once their summed compute reached the budget
    assert (frame["epoch"] == 2).all() or frame["time/total_s"].sum() >= 1.0
    best = grid.get_best_result()
    # the default rule's range
    assert 1e-4 <= best.config["lr"] <= 3e-2 and 1e-2 <= best.config["beta"] <= 1.0
    assert 0.0 <= best.metrics["test/acc"] <= 1.0
    # each checkpoint holds the model and the optimizer's state: eta (tuned online), tangents, AdamW moments.
    # It is the one of the trial's last report, or of the report before when the budget stopped the trial
    # at that report (Ray may not register the checkpoint of the report it stops on).
    loaded = 0
    for result in grid:
        if result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / tune_trainable.CHECKPOINT, weights_only=False)
        model = build((30,), 2, hidden=result.config["hidden"])
        model.load_state_dict(state["model"])
        opt = RTHPO(model.parameters(), lr=result.config["lr"], beta=result.config["beta"], base="adamw",
                    weight_decay=0.01)
        opt.load_state_dict(state["optimizer"])
        reports = result.metrics_dataframe.set_index("epoch")
        assert opt.eta == pytest.approx(reports.loc[state["epoch"], "lr"]) and opt.step_count > 0
        loaded += 1
    assert loaded >= 1


def test_rthpo_compare_on_the_example_config(ray_local: None, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    quick = [a for name in ("adamw_rthpo", "adamw_cosine_bo")
             for a in ("--set", f"strategies.{name}.num_samples=2")]
    assert main(["compare", str(EXAMPLE / "compare.yaml"), "--output", str(out), "--set", "train.epochs=2",
                 *quick]) == 0
    printed = capsys.readouterr().out
    assert "on tabular_demo.data:load/tabular_demo.model:build" in printed
    trials = pd.read_csv(out / "trials.csv")
    assert set(trials["strategy"]) == {"adamw_rthpo", "adamw_cosine_bo"}
    assert (trials.groupby("strategy")["trial_id"].nunique().to_dict()
            == {"adamw_rthpo": 2, "adamw_cosine_bo": 2})
    assert trials[M.VAL_ACC].between(0, 1).all() and not trials[M.DIVERGED].any()
    rthpo = trials[trials["strategy"] == "adamw_rthpo"]
    assert (rthpo[M.LR] != rthpo["config/lr.eta0"]).any()  # eta moved online
    summary = (out / "summary.md").read_text()
    assert "| adamw_rthpo |" in summary and "| adamw_cosine_bo |" in summary
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["base"]["model"]["factory"] == "tabular_demo.model:build"
    assert resolved["base"]["optim"]["base"] == "adamw"
    assert str(EXAMPLE) in resolved["base"]["train"]["pythonpath"]


USER_MODULE = '''
import torch
from torch import nn


def load(seed=0):
    g = torch.Generator().manual_seed(123)
    y = torch.randint(0, 3, (160,), generator=g)
    x = torch.randn(160, 4, generator=g) + y[:, None].float()
    return (x[:120], y[:120]), None, (x[120:], y[120:])  # validation carved from train by data.val_fraction


def build(input_shape, num_classes, width=8):
    return nn.Sequential(nn.Linear(input_shape[0], width), nn.Tanh(), nn.Linear(width, num_classes))
'''


def test_trials_import_user_code_from_the_config_files_folder(ray_local: None, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"rthpo_user_{tmp_path.name.replace('-', '_')}"  # a module no other test or worker has seen
    project = tmp_path / "project"
    project.mkdir()
    (project / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    config = project / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "base": {"data": {"factory": f"{name}:load", "val_fraction": 0.25, "batch_size": 32},
                 "model": {"factory": f"{name}:build", "factory_args": {"width": 8}},
                 "lr": {"method": "fixed"}, "train": {"epochs": 2}},
        "budget_s": 100.0, "max_concurrent": 2,
        "strategies": [{"name": "grid", "searcher": "grid", "space": {"lr.eta0": {"grid": [0.05, 0.2]}}}]}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the driver's directory nor the workers' path holds the module
    assert importlib.util.find_spec(name) is None
    out = tmp_path / "out"
    assert main(["run", str(config), "--output", str(out)]) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert trials["trial_id"].nunique() == 2 and set(trials[M.EPOCH]) == {1, 2}
    assert trials[M.VAL_ACC].between(0, 1).all()
    assert yaml.safe_load((out / "config.yaml").read_text())["base"]["train"]["pythonpath"] == [
        str(elsewhere.resolve()), str(project.resolve())]
