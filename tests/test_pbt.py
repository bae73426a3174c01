"""Population-based training (``scheduler: pbt``): a trial continues a better trial's model with a mutated
η (``Trainer.load(..., adopt=...)``), the budget counts every epoch that ran once, bad PBT configs are
refused with the fix, and on a real local Ray a population with diverging members still finishes."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hypergrad_helpers import tangents
from tune_helpers import tiny_experiment

from ray_rthpo import metrics as M
from ray_rthpo.cli import main
from ray_rthpo.config import Config, DataConfig, LRConfig, ModelConfig, TrainConfig
from ray_rthpo.errors import ConfigError
from ray_rthpo.experiment.config import experiment_from_dict
from ray_rthpo.training.methods import read_lr
from ray_rthpo.training.trainer import Trainer
from ray_rthpo.tune.budget import ComputeBudgetStopper


def small(method: str = "fixed", **lr: float) -> Config:
    return Config(data=DataConfig(name="digits", batch_size=64, val_batch_size=64),
                  model=ModelConfig(name="mlp", hidden=(16,)),
                  lr=LRConfig(method=method, **{"eta0": 0.1, **lr}), train=TrainConfig(epochs=3, seed=0))


def test_adopt_takes_the_model_and_applies_the_new_eta(tmp_path: Path) -> None:
    donor = Trainer(small())
    donor.run_epoch()
    donor.save(tmp_path / "donor.pt")
    clone = Trainer(small(eta0=0.025))
    adopted = clone.load(tmp_path / "donor.pt", adopt=["lr.eta0"])
    assert adopted == {"lr.eta0": (0.1, 0.025)} and clone.adopted == adopted
    assert clone.epoch == 1 and read_lr(clone.optimizer) == 0.025
    for a, b in zip(donor.model.parameters(), clone.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # the clone trains on with the new eta: same weights and data order, a smaller step than the donor's
    after_donor, after_clone = donor.run_epoch(), clone.run_epoch()
    assert after_clone[M.LR] == 0.025 and after_donor[M.LR] == 0.1
    assert after_clone[M.TRAIN_LOSS] != after_donor[M.TRAIN_LOSS]


def test_adopt_for_a_hypergradient_method_restarts_eta_and_keeps_the_tangent(tmp_path: Path) -> None:
    donor = Trainer(small("rthpo", beta=1.0e-3))
    donor.run_epoch()
    donor.save(tmp_path / "donor.pt")
    clone = Trainer(small("rthpo", eta0=0.05, beta=1.0e-4))
    assert set(clone.load(tmp_path / "donor.pt", adopt=["lr.eta0", "lr.beta"])) == {"lr.eta0", "lr.beta"}
    assert read_lr(clone.optimizer) == 0.05 and clone.optimizer.param_groups[0]["beta"] == 1.0e-4
    assert tangents(donor.optimizer)
    for a, b in zip(tangents(donor.optimizer), tangents(clone.optimizer), strict=True):
        assert torch.equal(a, b)


def test_an_exact_resume_adopts_nothing(tmp_path: Path) -> None:
    run = Trainer(small())
    run.run_epoch()
    run.save(tmp_path / "ckpt.pt")
    again = Trainer(small())
    assert again.load(tmp_path / "ckpt.pt", adopt=["lr.eta0"]) == {}
    assert read_lr(again.optimizer) == 0.1


@pytest.mark.parametrize("other,adopt,match", [
    (small(eta0=0.05), (), r"different configuration: lr\.eta0 \(checkpoint 0\.1, now 0\.05\)"),
    (small().replace(**{"model.hidden": [8]}), ["lr.eta0"], r"model\.hidden"),
    (small("exp_decay"), ["lr.eta0"], r"lr\.method"),
    (small(), ["model.hidden"], r"cannot take over.*lr\.eta0"),
])
def test_adopt_refuses_anything_but_learning_rate_keys(tmp_path: Path, other: Config, adopt: list[str],
                                                        match: str) -> None:
    run = Trainer(small())
    run.run_epoch()
    run.save(tmp_path / "ckpt.pt")
    with pytest.raises(ConfigError, match=match):
        Trainer(other).load(tmp_path / "ckpt.pt", adopt=adopt)


def test_increment_mode_counts_each_epoch_once() -> None:
    stopper = ComputeBudgetStopper(10.0, increment_key=M.EPOCH_SECONDS)
    assert not stopper("a", {M.EPOCH_SECONDS: 3.0, M.TOTAL_SECONDS: 3.0})
    # b clones a's checkpoint: its cumulative total jumps to a's, but only its own epoch counts
    assert not stopper("b", {M.EPOCH_SECONDS: 3.0, M.TOTAL_SECONDS: 6.0})
    assert stopper.spent_s == 6.0
    assert stopper("a", {M.EPOCH_SECONDS: 4.0, M.TOTAL_SECONDS: 7.0})
    with pytest.raises(ConfigError, match="increment_key"):
        ComputeBudgetStopper(10.0, increment_key="")


PBT = {"name": "pbt", "method": "fixed", "searcher": "random", "num_samples": 4, "scheduler": "pbt",
       "pbt": {"perturbation_interval": 1, "quantile_fraction": 0.25, "resample_probability": 0.5},
       "space": {"lr.eta0": {"loguniform": [1.0e-2, 1.0]}}}


@pytest.mark.parametrize("change,match", [
    ({"searcher": "optuna_tpe"}, r"scheduler pbt .* set searcher: random"),
    ({"num_samples": None}, r"num_samples: the population size"),
    ({"pbt": {"mutate": ["lr.beta"]}}, r"lr\.beta.*not in the strategy's space"),
    ({"pbt": {"mutate": ["model.hidden"]}}, r"cannot take over"),
    ({"pbt": {"perturbation_interval": 5}}, r"no perturbation would ever happen"),
    ({"pbt": {"quantile_fraction": 0.9}}, r"quantile_fraction must be in \(0, 0\.5\]"),
])
def test_bad_pbt_configs_say_the_fix(change: dict, match: str) -> None:
    strategy = {**PBT, **change}
    with pytest.raises(ConfigError, match=match):
        experiment_from_dict(tiny_experiment(strategy))


@pytest.mark.ray
def test_pbt_exploits_and_survives_diverging_members(ray_local: None, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """η̄ up to 1e4 makes some members diverge in their first epoch; they end there as ``diverged``, PBT
    goes on with the others (cloning good members with a perturbed η), and the table picks a good run."""
    strategy = {**PBT, "num_samples": 4, "space": {"lr.eta0": {"loguniform": [1.0e-2, 1.0e4]}}}
    experiment = tiny_experiment(strategy, budget_s=1000.0)
    experiment["base"] = {**experiment["base"], "train": {"epochs": 4, "seed": 0},
                          "lr": {"method": "fixed", "eta0": 0.1, "eta_max": 1.0e5}}
    config = tmp_path / "pbt.yaml"
    config.write_text(yaml.safe_dump(experiment))
    out = tmp_path / "out"
    assert main(["compare", str(config), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FAILED" not in printed and "trial error" not in printed
    trials = pd.read_csv(out / "trials.csv")
    assert trials["trial_id"].nunique() == 4
    for column in (M.TRAIN_LOSS, M.VAL_LOSS, M.VAL_ACC, M.LR):
        assert trials[column].map(lambda v: math.isfinite(float(v))).all(), column
    # an exploit happened: some trial's η changed within the trial (a fixed-η run never changes it alone)
    changed = trials.groupby("trial_id")[M.LR].nunique()
    assert (changed > 1).any(), trials[["trial_id", M.EPOCH, M.LR, M.STATUS]]
    # a diverged member either ends there (marked) or, if PBT picks it at that boundary, continues as a
    # clone of a good member; every other member trains on to the last epoch
    final = trials.sort_values(M.EPOCH).groupby("trial_id").last()
    assert set(final[M.STATUS]) <= {M.STATUS_FINISHED, M.STATUS_DIVERGED}
    assert (final[M.STATUS] == M.STATUS_FINISHED).any()
    assert (final.loc[final[M.STATUS] == M.STATUS_FINISHED, M.EPOCH] == 4).all()
    assert (final.loc[final[M.DIVERGED], M.STATUS] == M.STATUS_DIVERGED).all()
    ever = trials.groupby("trial_id")[M.DIVERGED].any()
    assert ever.any(), "η̄ up to 1e4 should make at least one member diverge"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")}
    header = rows.pop("strategy")
    assert rows["pbt"][header.index("diverged trials")] == str(int(ever.sum()))
    assert "DIVERGED" not in rows["pbt"][header.index("chosen config")]
