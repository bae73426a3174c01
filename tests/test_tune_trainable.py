"""The Ray Tune trainable under a real local Ray: tune.run, Tuner, and exact resume from a checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from ray import cloudpickle, tune
from tune_helpers import TINY_BASE

from ray_rthpo import metrics as M
from ray_rthpo.config import config_from_dict
from ray_rthpo.tune import trainable as T

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules

pytestmark = pytest.mark.ray


def flat_config(**overrides: Any) -> dict[str, Any]:
    return config_from_dict(TINY_BASE).replace(**overrides).to_flat()


def test_config_from_ray_accepts_numpy_scalars_and_rejects_unknown_keys() -> None:
    import numpy as np

    config = T.config_from_ray({**flat_config(), "lr.eta0": np.float64(0.2), "train.epochs": np.int64(3)})
    assert config.lr.eta0 == 0.2 and config.train.epochs == 3 and isinstance(config.train.epochs, int)
    with pytest.raises(ValueError, match="unknown key 'lr.eta'"):
        T.config_from_ray({"lr.eta": 0.1})


def test_tune_run_reports_every_epoch_with_node_and_time(ray_local: None, tmp_path: Path) -> None:
    analysis = tune.run(
        T.train_fn, config={**flat_config(**{"train.epochs": 3}), "lr.eta0": tune.loguniform(1e-2, 1.0)},
        num_samples=2, metric=M.VAL_ACC, mode="max", storage_path=str(tmp_path), name="tune_run", verbose=0,
        resources_per_trial={"cpu": 1},
    )
    assert len(analysis.trials) == 2
    for trial in analysis.trials:
        df = analysis.trial_dataframes[trial.trial_id]
        assert df[M.EPOCH].tolist() == [1, 2, 3]
        assert df[M.TOTAL_SECONDS].is_monotonic_increasing
        for key in (M.TRAIN_SECONDS, M.EVAL_SECONDS, M.HYPER_SECONDS, T.NODE_ID, T.NODE_IP, T.HOSTNAME,
                    T.DEVICE_NAME, M.DEVICE):
            assert key in df.columns, key
        assert df[T.NODE_ID].iloc[0] and df[M.DEVICE].iloc[0] == "cpu"
        assert trial.checkpoint is not None and trial.status == "TERMINATED"
    assert analysis.best_config["lr.eta0"] > 0


def test_tuner_checkpoints_every_epoch(ray_local: None, tmp_path: Path) -> None:
    tuner = tune.Tuner(
        tune.with_resources(T.fresh_train_fn(), {"cpu": 1}),  # with_resources marks the function
        param_space={**flat_config(), "lr.eta0": tune.grid_search([0.05, 0.5])},
        tune_config=tune.TuneConfig(metric=M.VAL_ACC, mode="max"),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="tuner", verbose=0),
    )
    grid = tuner.fit()
    assert not grid.errors and len(grid) == 2
    best = grid.get_best_result()
    assert best.metrics[M.EPOCH] == 2 and best.metrics[M.STATUS] == M.STATUS_FINISHED
    with best.checkpoint.as_directory() as folder:
        state_file = Path(folder) / T.CHECKPOINT_FILE
        assert state_file.is_file()
        from ray_rthpo.training.trainer import Trainer

        trainer = Trainer(T.config_from_ray(best.config))
        trainer.load(state_file)
        assert trainer.epoch == 2 and trainer.done


class ReportRecorder(tune.Callback):
    """Every result the driver receives, in order (Tune's own progress.csv is restored from the storage copy
    when a trial restarts, and on a loaded machine that copy can predate the first epochs)."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self.results.append(dict(result))


def plain_and_faulty_runs(tmp_path: Path, faulty_fn: Any, marker: Path) -> tuple[Any, Any, list[Any]]:
    """The Tune results of one RT-HPO trial run plainly and by ``faulty_fn`` (retried once from its
    checkpoint), and every result each run reported, as the driver received them."""
    config = flat_config(**{"lr.method": "rthpo", "lr.beta": 1.0e-3, "train.epochs": 4})
    runs, reports = [], []
    for name, fn, extra in (("plain", T.train_fn, {}), ("faulty", faulty_fn, {"test.marker": str(marker)})):
        recorder = ReportRecorder()
        grid = tune.Tuner(
            fn, param_space={**config, **extra},
            run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0, callbacks=[recorder],
                                      failure_config=tune.FailureConfig(max_failures=1)),
        ).fit()
        assert not grid.errors, grid.errors
        runs.append(grid[0])
        reports.append(recorder.results)
    return runs[0], runs[1], reports


def test_a_crashed_trial_resumes_from_its_checkpoint_exactly(ray_local: None, tmp_path: Path) -> None:
    from tune_helpers import crashed_once_train_fn

    _, _, (plain, flaky) = plain_and_faulty_runs(tmp_path, crashed_once_train_fn, tmp_path / "crashed")
    assert (tmp_path / "crashed").exists()  # the flaky run did crash once
    assert [r[M.EPOCH] for r in flaky] == [1, 2, 3, 4]  # resumed at epoch 3, not from scratch
    for key in (M.TRAIN_LOSS, M.VAL_LOSS, M.LR, M.HYPERGRAD, M.STEP):
        assert [r[key] for r in flaky] == [r[key] for r in plain], key
    totals = [r[M.TOTAL_SECONDS] for r in flaky]
    assert totals == sorted(totals)


def test_a_worker_killed_with_sigkill_resumes_from_its_checkpoint_exactly(
        ray_local: None, tmp_path: Path) -> None:
    from tune_helpers import killed_once_train_fn

    plain_run, killed_run, (_, reported) = plain_and_faulty_runs(tmp_path, killed_once_train_fn,
                                                                 tmp_path / "killed")
    assert (tmp_path / "killed").exists()  # the worker process did die once
    plain, killed = plain_run.metrics, killed_run.metrics
    assert killed[M.EPOCH] == 4 and killed[M.STATUS] == M.STATUS_FINISHED
    for key in (M.TRAIN_LOSS, M.VAL_LOSS, M.VAL_ACC, M.TEST_ACC, M.LR, M.HYPERGRAD, M.STEP):
        assert killed[key] == plain[key], key
    epochs = [r[M.EPOCH] for r in reported]
    assert epochs[-2:] == [3, 4] and 1 not in epochs[2:]  # continued from a checkpoint, not from scratch
