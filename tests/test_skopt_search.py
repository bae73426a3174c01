"""Tests of ray_rthpo.tune.skopt_search.SkOptSearch.

Layer 1 drives the searcher by hand, without Ray running. Layer 2 (marked ``ray``) runs it under a
real local Ray with ``tune.Tuner`` and ``tune.run``.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from ray import tune

import ray_rthpo.tune.skopt_search as skopt_search
from ray_rthpo.errors import ConfigError
from ray_rthpo.tune.skopt_search import SkOptSearch

SPACE: dict[str, Any] = {"lr.eta0": tune.loguniform(1e-4, 1.0), "b": tune.uniform(-1.0, 1.0)}


def quadratic(config: dict[str, Any]) -> float:
    """A 2-D bowl in (log10 lr, b), minimum 0 at lr = 1e-2, b = 0.3."""
    return (math.log10(config["lr.eta0"]) + 2.0) ** 2 + (config["b"] - 0.3) ** 2


def drive(
    searcher: SkOptSearch,
    n: int,
    objective: Callable[[dict[str, Any]], float] = quadratic,
    metric: str = "loss",
    start: int = 0,
) -> tuple[list[dict[str, Any]], list[float]]:
    """Suggest and complete ``n`` trials one after the other; return the configs and values."""
    configs, values = [], []
    for i in range(start, start + n):
        config = searcher.suggest(f"t{i}")
        assert isinstance(config, dict)
        value = objective(config)
        searcher.on_trial_complete(f"t{i}", {metric: value})
        configs.append(config)
        values.append(value)
    return configs, values


# ------------------------------------------------------------------------------------------------
# Layer 1: by hand, no Ray


def test_converges_better_than_initial_random_points() -> None:
    searcher = SkOptSearch(SPACE, metric="loss", mode="min", seed=0, n_initial_points=5)
    configs, values = drive(searcher, 14)
    assert min(values[5:]) < min(values[:5]) / 5
    assert min(values) < 0.05, values  # the bowl's minimum is 0; the best random point is ~0.29
    for config in configs:
        assert 1e-4 <= config["lr.eta0"] <= 1.0 and -1.0 <= config["b"] <= 1.0
        assert set(config) == {"lr.eta0", "b"}


def test_same_seed_same_first_8_suggestions_and_other_seed_differs() -> None:
    # 5 random points, then 3 from the GP: both phases must be reproducible.
    first, _ = drive(SkOptSearch(SPACE, "loss", "min", seed=7, n_initial_points=5), 8)
    again, _ = drive(SkOptSearch(SPACE, "loss", "min", seed=7, n_initial_points=5), 8)
    assert first == again
    assert SkOptSearch(SPACE, "loss", "min", seed=8).suggest("t0") != first[0]


def test_mode_max_is_min_of_the_negated_metric() -> None:
    lo = SkOptSearch(SPACE, "loss", "min", seed=3, n_initial_points=3)
    hi = SkOptSearch(SPACE, "score", "max", seed=3, n_initial_points=3)
    lo_configs, _ = drive(lo, 6)
    hi_configs, scores = drive(hi, 6, objective=lambda c: -quadratic(c), metric="score")
    assert hi_configs == lo_configs
    assert hi.optimizer.yi == pytest.approx([-s for s in scores])  # skopt minimises -score
    assert lo.optimizer.yi == pytest.approx(hi.optimizer.yi)


@pytest.mark.parametrize(
    ("result", "error"),
    [
        ({"loss": float("nan")}, False),
        ({"loss": float("inf")}, False),
        ({"loss": float("-inf")}, False),
        ({"loss": 0.5}, True),  # errored trial: even a finite last metric is not told
        (None, True),
        (None, False),
        ({"other": 1.0}, False),
        ({"loss": "high"}, False),
    ],
)
def test_bad_results_are_dropped_by_default(
    result: dict[str, Any] | None, error: bool, caplog: pytest.LogCaptureFixture
) -> None:
    searcher = SkOptSearch(SPACE, "loss", "min", seed=0, n_initial_points=4)
    drive(searcher, 3)
    searcher.suggest("bad")
    with caplog.at_level(logging.INFO, logger=skopt_search.__name__):
        searcher.on_trial_complete("bad", result, error=error)
    assert len(searcher.optimizer.yi) == 3
    assert all(math.isfinite(y) for y in searcher.optimizer.yi)
    assert "trial bad" in caplog.text
    assert "bad" not in searcher.live_trials
    drive(searcher, 2, start=3)  # and the search goes on, into the GP phase
    assert len(searcher.optimizer.yi) == 5 and searcher.optimizer.models


@pytest.mark.parametrize("mode", ["min", "max"])
def test_penalty_is_told_in_the_metric_units(mode: str) -> None:
    searcher = SkOptSearch(SPACE, "m", mode, seed=0, penalty=10.0)
    for i, (result, error) in enumerate(
        [({"m": float("nan")}, False), ({"m": float("inf")}, False), (None, True)]
    ):
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", result, error=error)
    expected = 10.0 if mode == "min" else -10.0
    assert searcher.optimizer.yi == [expected] * 3
    searcher.suggest("never-ran")
    searcher.on_trial_complete("never-ran")  # how Ray removes a pending trial: no penalty for it
    assert len(searcher.optimizer.yi) == 3


def test_repeated_and_unknown_completions_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    searcher = SkOptSearch(SPACE, "loss", "min", seed=0)
    config = searcher.suggest("a")
    searcher.on_trial_complete("a", {"loss": quadratic(config)})
    with caplog.at_level(logging.WARNING, logger=skopt_search.__name__):
        searcher.on_trial_complete("a", {"loss": 123.0})
        searcher.on_trial_complete("never-suggested", {"loss": 1.0})
    assert searcher.optimizer.yi == [pytest.approx(quadratic(config))]
    assert "already completed" in caplog.text and "unknown trial never-suggested" in caplog.text


def test_a_failing_tell_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    searcher = SkOptSearch(SPACE, "loss", "min", seed=0)
    searcher.suggest("a")

    def broken_tell(*args: Any, **kwargs: Any) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(searcher.optimizer, "tell", broken_tell)
    with caplog.at_level(logging.ERROR, logger=skopt_search.__name__):
        searcher.on_trial_complete("a", {"loss": 1.0})
    assert "boom" in caplog.text and not searcher.live_trials


def test_save_restore_with_a_live_trial_matches_the_uninterrupted_searcher(tmp_path: Any) -> None:
    kwargs: dict[str, Any] = dict(metric="loss", mode="min", seed=11, n_initial_points=3)
    a = SkOptSearch(SPACE, **kwargs)
    drive(a, 4)
    live = a.suggest("live")  # left unfinished at save time
    path = str(tmp_path / "searcher.pkl")
    a.save(path)
    assert os.listdir(tmp_path) == ["searcher.pkl"]  # the temporary file was renamed, not left behind

    b = SkOptSearch()  # fresh: no space, metric or seed; everything comes from the checkpoint
    b.restore(path)
    assert b.live_trials == {"live": live}
    assert (b.metric, b.mode) == ("loss", "min")
    assert b.optimizer.Xi == a.optimizer.Xi and b.optimizer.yi == a.optimizer.yi

    # While "live" is still running (constant-liar path) both ask the same next point...
    assert b.suggest("next") == a.suggest("next")
    # ...the trial live before the save can be completed after the restore...
    for s in (a, b):
        s.on_trial_complete("live", {"loss": quadratic(live)})
        s.on_trial_complete("next", {"loss": quadratic(s.live_trials["next"])})
    assert len(b.optimizer.yi) == 6
    # ...and the rest of the search is identical.
    assert drive(b, 2, start=100) == drive(a, 2, start=100)


def test_restore_errors_say_what_to_do(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        SkOptSearch().restore(str(tmp_path / "missing.pkl"))
    bogus = tmp_path / "bogus.pkl"
    bogus.write_bytes(pickle.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="version"):
        SkOptSearch().restore(str(bogus))


def test_get_state_set_state_and_pickling_round_trip() -> None:
    a = SkOptSearch(SPACE, "loss", "min", seed=5, n_initial_points=3)
    drive(a, 3)
    b = SkOptSearch()
    b.set_state(a.get_state())
    c = pickle.loads(pickle.dumps(a))  # Ray pickles searchers: the lock must not get in the way
    expected = drive(a, 2, start=10)
    assert drive(b, 2, start=10) == expected
    assert drive(c, 2, start=10) == expected


# ask / done: two trials at once (constant liar), twice two results between asks
SCRIPT = ["a0", "a1", "d0", "a2", "d1", "a3", "d2", "d3", "a4", "a5", "d4", "a6", "d5", "d6", "a7", "a8",
          "d8", "a9", "d7", "a10"]


def play(searcher: SkOptSearch, settle: bool = False) -> list[dict[str, Any]]:
    """Run :data:`SCRIPT`; ``settle``: wait for the background thread after every event."""
    configs: dict[str, dict[str, Any]] = {}
    for step in SCRIPT:
        trial = f"t{step[1:]}"
        if step[0] == "a":
            config = searcher.suggest(trial)
            assert config is not None  # the background searcher answers at once (or waits): never None
            configs[trial] = config
        else:
            searcher.on_trial_complete(trial, {"loss": quadratic(configs[trial])})
        if settle:
            searcher.wait_fitted(timeout_s=60)
    return list(configs.values())


def test_background_fits_given_time_propose_what_the_synchronous_searcher_proposes() -> None:
    """With the thread given time after every event, the background searcher asks exactly the synchronous
    one's points (its asks on copies leave the optimizer as the synchronous tells and asks do)."""
    expected = play(SkOptSearch(SPACE, "loss", "min", seed=3, n_initial_points=3))
    background = SkOptSearch(SPACE, "loss", "min", seed=3, n_initial_points=3, background=True)
    assert play(background, settle=True) == expected


def test_background_fits_without_waiting_tell_every_result_and_never_repeat_a_point() -> None:
    """Events faster than the fits: every suggestion is answered, points differ from one another, and
    every result reaches the optimizer in the order the trials completed."""
    searcher = SkOptSearch(SPACE, "loss", "min", seed=5, n_initial_points=3, background=True)
    configs = play(searcher)
    searcher.wait_fitted(timeout_s=60)
    points = [tuple(sorted(c.items())) for c in configs]
    assert len(set(points)) == len(points)
    done = [f"t{step[1:]}" for step in SCRIPT if step[0] == "d"]
    by_id = {f"t{i}": c for i, c in enumerate(configs)}
    assert searcher.optimizer.yi == pytest.approx([quadratic(by_id[t]) for t in done])


def test_background_state_saved_mid_fit_restores_and_pickles() -> None:
    """A state taken while the thread fits holds the queued results; restored or unpickled, the searcher
    goes on from it."""
    a = SkOptSearch(SPACE, "loss", "min", seed=4, n_initial_points=3, background=True)
    for i in range(5):
        config = a.suggest(f"t{i}")
        assert config is not None
        a.on_trial_complete(f"t{i}", {"loss": quadratic(config)})  # its thread starts telling at once
    state, pickled = a.get_state(), pickle.dumps(a)
    assert len(state["optimizer"].yi) + len(state["untold"]) == 5
    b, c = SkOptSearch(), pickle.loads(pickled)  # b: synchronous, it tells the queued results when it asks
    b.set_state(state)
    for searcher in (a, c):
        searcher.wait_fitted(timeout_s=60)
    assert b.suggest("next") == c.suggest("next") == a.suggest("next")
    assert b.optimizer.yi == c.optimizer.yi == a.optimizer.yi and len(a.optimizer.yi) == 5


def test_max_concurrent_and_distinct_concurrent_points() -> None:
    searcher = SkOptSearch(SPACE, "loss", "min", seed=0, n_initial_points=3, max_concurrent=2)
    drive(searcher, 4)  # past the random phase: the GP proposes from now on
    first = searcher.suggest("p1")
    second = searcher.suggest("p2")
    assert searcher.suggest("p3") is None  # two live trials: Tune will ask again later
    assert first != second  # skopt's plain ask() would repeat the point; the constant liar does not
    searcher.on_trial_complete("p1", {"loss": quadratic(first)})
    assert isinstance(searcher.suggest("p3"), dict)
    assert searcher.set_max_concurrency(3) is True
    assert isinstance(searcher.suggest("p4"), dict)


def test_space_conversion_types_bounds_and_constants() -> None:
    space = {
        "lr.eta0": tune.loguniform(1e-4, 1e-1),
        "mom": tune.uniform(0.0, 0.9),
        "depth": tune.randint(1, 4),
        "act": tune.choice(["relu", "tanh"]),
        "flag": tune.choice([True, False]),
        "epochs": 3,
        "tags": ["x", "y"],
    }
    searcher = SkOptSearch(space, "loss", "min", seed=0, n_initial_points=4)
    dims = dict(zip(searcher.parameter_names, searcher.optimizer.space.dimensions, strict=True))
    assert dims["lr.eta0"].prior == "log-uniform" and dims["lr.eta0"].bounds == (1e-4, 1e-1)
    assert dims["depth"].bounds == (1, 3)  # randint's upper bound is exclusive
    for i in range(6):  # 4 random points, then 2 from the GP (numpy scalars must become Python types)
        config = searcher.suggest(f"t{i}")
        assert config["epochs"] == 3 and config["tags"] == ["x", "y"]
        assert type(config["depth"]) is int and 1 <= config["depth"] <= 3
        assert type(config["lr.eta0"]) is float and type(config["mom"]) is float
        assert config["act"] in ("relu", "tanh") and type(config["act"]) is str
        assert type(config["flag"]) is bool
        searcher.on_trial_complete(f"t{i}", {"loss": config["lr.eta0"] + config["depth"]})


def test_set_search_properties_takes_space_metric_mode_from_tune() -> None:
    searcher = SkOptSearch(seed=0)
    param_space = {
        "lr.eta0": tune.loguniform(1e-4, 1.0),
        "opt.b": tune.uniform(-1, 1),
        "opt.name": "sgd",
        "epochs": 2,
    }
    assert searcher.set_search_properties("loss", "min", param_space) is True
    assert searcher.parameter_names == ["lr.eta0", "opt.b"]
    config = searcher.suggest("t0")
    assert config["epochs"] == 2 and config["opt.name"] == "sgd" and -1 <= config["opt.b"] <= 1
    assert (searcher.metric, searcher.mode) == ("loss", "min")

    own_space = SkOptSearch(SPACE, seed=0)
    assert own_space.set_search_properties("loss", "max", {"epochs": 2}) is True  # metric/mode adopted
    assert (own_space.metric, own_space.mode) == ("loss", "max")
    for extra in ({"x": tune.uniform(0, 1)}, {"g": tune.grid_search([1, 2])}):
        with pytest.raises(ConfigError, match="in one place"):
            own_space.set_search_properties("loss", "max", extra)
    assert (
        SkOptSearch(seed=0).set_search_properties("loss", "min", {"epochs": 2}) is False
    )  # no space anywhere
    with pytest.raises(ConfigError, match="metric was given twice"):
        own_space.set_search_properties("acc", None, {})
    with pytest.raises(ConfigError, match="'lr'.*grid_search"):
        SkOptSearch().set_search_properties("loss", "min", {"lr": tune.grid_search([0.1, 0.2])})


@pytest.mark.parametrize("estimator", ["GP", "RF", "ET"])
def test_every_base_estimator_runs_with_numpy2_and_current_sklearn(estimator: str) -> None:
    space = {
        "lr.eta0": tune.loguniform(1e-4, 1.0),
        "b": tune.uniform(-1.0, 1.0),
        "act": tune.choice(["a", "b"]),
    }
    searcher = SkOptSearch(space, "loss", "min", seed=0, base_estimator=estimator, n_initial_points=2)
    _, values = drive(searcher, 4)
    assert len(searcher.optimizer.yi) == 4 and all(math.isfinite(v) for v in values)


def test_missing_skopt_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skopt_search, "skopt", None)
    with pytest.raises(ImportError, match="pip install scikit-optimize"):
        SkOptSearch(SPACE)


def test_suggest_without_space_or_metric_says_how_to_fix() -> None:
    with pytest.raises(RuntimeError, match="no search space"):
        SkOptSearch(metric="loss", mode="min").suggest("t")
    with pytest.raises(RuntimeError, match="needs metric and mode"):
        SkOptSearch(SPACE).suggest("t")


ERROR_CASES: list[tuple[dict[str, Any], str]] = [
    ({"space": {"lr": tune.grid_search([0.1, 0.2])}}, r"'lr'.*grid_search.*tune\.choice"),
    ({"space": {"x": tune.randn(0.0, 1.0)}}, r"'x'.*Normal"),
    ({"space": {"x": tune.qloguniform(1e-3, 1.0, 1e-3)}}, r"'x'.*Quantized|'x'.*LogUniform"),
    ({"space": {"x": tune.lograndint(1, 10)}}, r"'x'.*Integer domain with LogUniform sampler"),
    ({"space": {"opt": {"lr": tune.uniform(0, 1)}}},
     r"'opt'.*dict or list holding search domains.*'opt\.lr'"),
    ({"space": {"x": tune.sample_from(lambda _: 1)}}, r"'x'.*not supported"),
    ({"space": {"x": tune.choice([[1, 2], [3]])}}, r"'x'.*non-scalar"),
    ({"space": {"x": [tune.uniform(0, 1)]}}, r"'x'.*list holding search domains"),
    ({"space": {"epochs": 3}}, r"at least one searched parameter"),
    ({"space": [("lr", 1)]}, r"space must be a dict"),
    ({"space": SPACE, "mode": "maximize"}, r"mode must be 'min' or 'max', but got 'maximize'"),
    ({"space": SPACE, "metric": ["a", "b"], "mode": "min"}, r"metric must be one metric name"),
    ({"space": SPACE, "n_initial_points": 0}, r"n_initial_points must be an int >= 1, but got 0"),
    ({"space": SPACE, "acq_func": "EIps"}, r"acq_func must be one of"),
    ({"space": SPACE, "base_estimator": "SVM"}, r"base_estimator must be one of"),
    ({"space": SPACE, "base_estimator": "GBRT"}, r"one of \('GP', 'RF', 'ET'\), but got 'GBRT'"),
    ({"space": SPACE, "base_estimator": "DUMMY"}, r"one of \('GP', 'RF', 'ET'\), but got 'DUMMY'"),
    ({"space": SPACE, "penalty": float("nan")}, r"penalty must be None .* or a finite number"),
    ({"space": SPACE, "max_concurrent": 0}, r"max_concurrent must be None or an int >= 1"),
    ({"space": SPACE, "seed": -1}, r"seed must be None or an int in \[0, 2\*\*32\), but got -1"),
]


@pytest.mark.parametrize(("kwargs", "regex"), ERROR_CASES)
def test_bad_inputs_raise_value_errors_that_name_the_problem(kwargs: dict[str, Any], regex: str) -> None:
    with pytest.raises(ValueError, match=regex):
        SkOptSearch(**kwargs)


# ------------------------------------------------------------------------------------------------
# Layer 2: a real local Ray


def _objective(config: dict[str, Any]) -> None:
    """Function trainable: one report; the region b > 0 returns NaN (a diverged run)."""
    loss = float("nan") if config["b"] > 0.0 else quadratic(config)
    tune.report({"loss": loss, "epochs_seen": config["epochs"]})


@pytest.mark.ray
def test_tuner_with_param_space_runs_all_trials_despite_nan(ray_local: None, tmp_path: Any) -> None:
    searcher = SkOptSearch(seed=0, n_initial_points=3)
    tuner = tune.Tuner(
        _objective,
        param_space={"lr.eta0": tune.loguniform(1e-4, 1.0), "b": tune.uniform(-1.0, 1.0), "epochs": 1},
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=6, metric="loss", mode="min", reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="skopt_tuner", verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 6 and not results.errors
    losses = [r.metrics["loss"] for r in results]
    assert sum(math.isnan(v) for v in losses) >= 1  # a NaN region point ran...
    assert all(r.metrics["epochs_seen"] == 1 for r in results)  # ...constants reached every trial
    assert math.isfinite(results.get_best_result().metrics["loss"])

    # Ray saved the searcher into the experiment directory; the NaN never reached the optimizer.
    restored = SkOptSearch()
    restored.restore_from_dir(str(tmp_path / "skopt_tuner"))
    assert (restored.metric, restored.mode) == ("loss", "min")
    assert len(restored.optimizer.yi) == sum(math.isfinite(v) for v in losses)
    assert all(math.isfinite(y) for y in restored.optimizer.yi)


@pytest.mark.ray
def test_tune_run_with_own_space_and_metric_from_tune(ray_local: None, tmp_path: Any) -> None:
    searcher = SkOptSearch(SPACE, seed=1, n_initial_points=2, max_concurrent=2)
    analysis = tune.run(
        _objective,
        config={"epochs": 2},
        search_alg=searcher,
        metric="loss",
        mode="min",
        num_samples=4,
        reuse_actors=True,  # Ray 2.60 defaults to False: a new actor per trial costs seconds
        storage_path=str(tmp_path),
        name="skopt_run",
        verbose=0,
    )
    assert len(analysis.trials) == 4
    assert all(t.status == "TERMINATED" for t in analysis.trials)
    assert all(t.last_result["epochs_seen"] == 2 for t in analysis.trials)
    assert (searcher.metric, searcher.mode) == ("loss", "min")
