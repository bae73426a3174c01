"""``tracking: {mlflow: URI}``: every run's parameters and per-epoch metrics in MLflow, read back with
MLflow's own client from a local file store under tmp_path (``rthpo train`` through the client,
``rthpo compare`` through Ray Tune's MLflowLoggerCallback with Tune's file loggers off), and the refusals
of bad input."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from tune_helpers import TINY_BASE, tiny_experiment

from ray_rthpo import metrics as M
from ray_rthpo.cli import main
from ray_rthpo.config import Config, TrackingConfig, config_from_dict
from ray_rthpo.errors import ConfigError
from ray_rthpo.experiment.config import apply_override, experiment_from_dict
from ray_rthpo.tracking import FILE_STORE_ENV, file_store_allowed, tracking_uri

pytestmark = pytest.mark.harness


@pytest.fixture
def mlflow_client() -> Iterator[Any]:
    """A function uri -> MlflowClient reading MLflow's file store (allowed while the test runs); the test is
    skipped where MLflow is not installed (the extra tracking, part of the extra test)."""
    pytest.importorskip("mlflow", reason="needs the extra tracking: pip install -e '.[tracking]'")
    from mlflow.tracking import MlflowClient

    before = os.environ.get(FILE_STORE_ENV)
    os.environ[FILE_STORE_ENV] = "true"
    try:
        yield lambda uri: MlflowClient(tracking_uri=uri)
    finally:
        if before is None:
            os.environ.pop(FILE_STORE_ENV, None)
        else:
            os.environ[FILE_STORE_ENV] = before


def runs_of(client: Any, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id])


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_train_logs_its_params_and_every_epochs_metrics_and_resume_goes_on_in_the_same_run(
        tmp_path: Path, mlflow_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "mlruns"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_BASE, "tracking": {"mlflow": str(store)}}))
    out = tmp_path / "out"
    os.environ.pop(FILE_STORE_ENV, None)  # rthpo allows the file store for itself
    assert main(["train", str(config), "--output", str(out)]) == 0
    assert FILE_STORE_ENV not in os.environ  # ... and only while it logs
    assert f"in experiment 'tiny' at {store.as_uri()}" in capsys.readouterr().out
    client = mlflow_client(store.as_uri())
    (run,) = runs_of(client, "tiny")  # the default experiment: the config file's name
    assert run.info.status == "FINISHED" and run.info.run_name == "out"
    params = run.data.params
    assert params["lr.eta0"] == "0.3" and params["lr.method"] == "exp_decay" and params["train.epochs"] == "2"
    assert not any(key.startswith("tracking.") for key in params)  # where it is logged, not what it is
    acc = history(client, run.info.run_id, M.VAL_ACC)
    assert [step for step, _ in acc] == [1, 2]  # one value per epoch, at its epoch
    rows = pd.read_csv(out / "history.csv")
    assert [value for _, value in acc] == pytest.approx(rows[M.VAL_ACC].tolist())
    assert [s for s, _ in history(client, run.info.run_id, M.LR)] == [1, 2]
    # the checkpoint never saw tracking (the Trainer gets the config without it); --resume logs to the
    # same run
    assert main(["train", str(config), "--output", str(out), "--resume", "--set", "train.epochs=3"]) == 0
    (again,) = runs_of(client, "tiny")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [step for step, _ in history(client, run.info.run_id, M.VAL_ACC)] == [1, 2, 3]


@pytest.mark.ray
def test_compare_logs_every_trial_through_ray_tunes_mlflow_callback_with_tunes_loggers_off(
        ray_local: None, tmp_path: Path, mlflow_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "mlruns"
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment(
        {"name": "exp", "method": "exp_decay", "searcher": "random", "num_samples": 2,
         "space": {"lr.eta0": {"loguniform": [0.05, 0.5]}}},
        {"name": "sgd", "method": "fixed", "searcher": "grid", "space": {"lr.eta0": {"grid": [0.1]}}},
        tracking={"mlflow": store.as_uri(), "experiment": "tiny-compare"})))
    out = tmp_path / "out"
    assert os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS") is None
    assert main(["compare", str(path), "--output", str(out)]) == 0
    capsys.readouterr()
    # Tune's own per-trial file loggers were off: no result.json / progress.csv in any trial folder
    assert not list((out / "ray").rglob("result.json")) and not list((out / "ray").rglob("progress.csv"))
    trials = pd.read_csv(out / "trials.csv")
    client = mlflow_client(store.as_uri())
    runs = {run.data.tags["rthpo.trial_id"]: run for run in runs_of(client, "tiny-compare")}
    assert set(runs) == set(trials["trial_id"]) and len(runs) == 3  # every trial is a run, once
    for trial_id, rows in trials.groupby("trial_id"):
        run = runs[trial_id]
        assert run.info.status == "FINISHED"
        assert run.data.tags["rthpo.strategy"] == rows["strategy"].iloc[0]
        assert run.data.tags["rthpo.method"] == rows["method"].iloc[0]
        params = run.data.params
        assert float(params["lr.eta0"]) == pytest.approx(rows["searched/lr.eta0"].iloc[0])
        assert params["lr.method"] == rows["method"].iloc[0] and params["data.name"] == "digits"
        assert not any(key.startswith("tracking.") for key in params)
        acc = history(client, run.info.run_id, M.VAL_ACC)
        assert [step for step, _ in acc] == sorted(rows[M.EPOCH]) == [1, 2]
        assert [value for _, value in acc] == pytest.approx(rows.sort_values(M.EPOCH)[M.VAL_ACC].tolist())
        assert "config/lr.eta0" not in run.data.metrics  # Tune's copy of the config is no metric
    assert os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS") is None


def test_the_tracking_section_round_trips_and_never_reaches_a_trial(tmp_path: Path) -> None:
    cfg = config_from_dict({"tracking": {"mlflow": "mlruns", "experiment": "x"}})
    assert cfg.tracking == TrackingConfig(mlflow="mlruns", experiment="x")
    assert config_from_dict(cfg.to_flat()) == cfg
    assert Config().tracking.enabled is False
    assert tracking_uri("mlruns", tmp_path) == (tmp_path / "mlruns").as_uri()
    assert tracking_uri("http://host:5000") == "http://host:5000"
    from ray_rthpo.tune.runner import param_space

    exp = experiment_from_dict(tiny_experiment({"name": "a", "method": "fixed"}, base={
        **TINY_BASE, "tracking": {"mlflow": "mlruns"}}), resolve_data=False)
    assert exp.tracking.mlflow == "mlruns"  # the base's section, when the experiment has none of its own
    assert not any(key.startswith("tracking.") for key in param_space(exp.resolved("a")))
    # --set tracking.* is the experiment's own, which wins over the base's
    data = apply_override(tiny_experiment({"name": "a", "method": "fixed"}), f"tracking.mlflow={tmp_path}")
    assert data["tracking"] == {"mlflow": str(tmp_path)}
    assert experiment_from_dict(data, resolve_data=False).tracking.mlflow == str(tmp_path)
    with file_store_allowed("http://host:5000"):
        assert FILE_STORE_ENV not in os.environ
    with file_store_allowed(str(tmp_path)):
        assert os.environ[FILE_STORE_ENV] == "true"
    assert FILE_STORE_ENV not in os.environ


@pytest.mark.parametrize(("tracking", "words"), [
    ({"mlfow": "mlruns"}, "unknown key 'tracking.mlfow'; did you mean 'mlflow'?"),
    ({"mlflow": 3}, "tracking.mlflow must be an MLflow tracking URI, a string such as file:///abs/mlruns"),
    ({"mlflow": ""}, "tracking.mlflow must be an MLflow tracking URI"),
    ({"experiment": "x"}, "tracking.experiment is 'x' but tracking.mlflow is null"),
    ({"mlflow": "mlruns", "experiment": 7}, "tracking.experiment must be an MLflow experiment name"),
    ("mlruns", "tracking must be a mapping of keys"),
    ({"mlflow": "http://me:secret@host:5000"}, "tracking.mlflow 'http://***@host:5000' holds credentials"),
])
def test_bad_tracking_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              tracking: Any, words: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY_BASE, "tracking": tracking}))
    assert main(["train", str(config), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    experiment = tmp_path / "exp.yaml"  # the same words for an experiment's tracking, before Ray starts
    experiment.write_text(yaml.safe_dump(tiny_experiment({"name": "a", "method": "fixed"},
                                                         tracking=tracking)))
    assert main(["compare", str(experiment), "--output", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err


def test_mlflow_not_installed_names_the_key_and_the_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow fails, as where it is not installed
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY_BASE, "tracking": {"mlflow": "mlruns"}}))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tracking.mlflow is 'mlruns', but MLflow is not installed" in err
    assert "pip install mlflow-skinny" in err
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(yaml.safe_dump(tiny_experiment({"name": "a", "method": "fixed"})))
    assert main(["compare", str(experiment), "--set", "tracking.mlflow=mlruns"]) == 2
    assert "pip install mlflow-skinny" in capsys.readouterr().err


def test_a_database_uri_without_its_layer_and_tracking_in_a_strategy_are_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "alembic", None)
    with pytest.raises(ConfigError, match=r"tracking.mlflow is 'sqlite:///m.db', a database store, which "
                                          r"needs alembic .*pip install mlflow \(the full package\)"):
        TrackingConfig(mlflow="sqlite:///m.db")
    for where in ({"overrides": {"tracking.mlflow": "mlruns"}},
                  {"searcher": "grid", "space": {"tracking.experiment": {"grid": ["a", "b"]}}}):
        with pytest.raises(ConfigError, match=r"strategy a: (overrides|space) sets tracking\.\w+, but "
                                              r"tracking is one for the whole experiment"):
            experiment_from_dict(tiny_experiment({"name": "a", "method": "fixed", **where}),
                                 resolve_data=False)


class FakeTrial:
    """What the callback reads of a Tune trial: its id, its flat config, its name."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        self.trial_id, self.config = trial_id, config

    def __str__(self) -> str:
        return f"train_fn_{self.trial_id}"


def test_the_tune_callback_keeps_a_trials_run_through_a_retry_a_pbt_mutation_and_a_resumed_driver(
        tmp_path: Path, mlflow_client: Any) -> None:
    from ray_rthpo.tune.tracking import TRIAL_ID_TAG, RTHPOMLflowLoggerCallback

    uri = (tmp_path / "mlruns").as_uri()

    def callback() -> Any:
        made = RTHPOMLflowLoggerCallback(uri, experiment_name="cb", tags={"rthpo.strategy": "s"},
                                         experiment_path=str(tmp_path / "ray" / "x"))
        made.setup()
        return made

    first = callback()
    trial = FakeTrial("abc_00000", {"lr.eta0": 0.1, "lr.method": "fixed", "tracking.mlflow": uri})
    first.log_trial_start(trial)
    first.log_trial_result(1, trial, {M.EPOCH: 1, M.VAL_ACC: 0.5, "config": trial.config, "hostname": "h"})
    first.log_trial_end(trial, failed=True)
    trial.config = {**trial.config, "lr.eta0": 0.2}  # a PBT exploit: MLflow keeps the first value
    first.log_trial_start(trial)  # Tune retries it in the same run
    first.log_trial_result(2, trial, {M.EPOCH: 2, M.VAL_ACC: 0.6})
    resumed = callback()  # a new driver (rthpo compare --resume) finds the trial's run again
    resumed.log_trial_start(trial)
    resumed.log_trial_result(3, trial, {M.EPOCH: 3, M.VAL_ACC: 0.7})
    resumed.on_experiment_end([trial])  # stopped by the budget: KILLED
    client = mlflow_client(uri)
    (run,) = runs_of(client, "cb")
    assert run.data.params == {"lr.eta0": "0.1", "lr.method": "fixed"}
    assert run.data.tags[TRIAL_ID_TAG] == "abc_00000" and run.data.tags["rthpo.strategy"] == "s"
    assert history(client, run.info.run_id, M.VAL_ACC) == [(1, 0.5), (2, 0.6), (3, 0.7)]
    assert run.info.status == "KILLED" and "hostname" not in run.data.metrics
