"""Tests of ray_rthpo.tune.budget.ComputeBudgetStopper: by hand, then under a real local Ray."""

from __future__ import annotations

import logging
import pickle
import time
from typing import Any

import numpy as np
import pytest
import ray.cloudpickle
from ray import tune

from ray_rthpo.metrics import EPOCH, EPOCH_SECONDS, TOTAL_SECONDS
from ray_rthpo.tune.budget import ComputeBudgetStopper

# ------------------------------------------------------------------------------------------------
# By hand


def test_two_interleaved_trials_sum_their_latest_counts() -> None:
    stopper = ComputeBudgetStopper(budget_s=10.0)
    assert stopper("a", {TOTAL_SECONDS: 1.0}) is False
    assert stopper("b", {TOTAL_SECONDS: 2.0}) is False
    assert stopper("a", {TOTAL_SECONDS: 3.0}) is False  # cumulative: a's 1.0 is replaced, not added
    assert stopper.spent_s == pytest.approx(5.0)
    assert stopper("b", {TOTAL_SECONDS: 6.5}) is False
    assert stopper.spent_s == pytest.approx(9.5)
    assert stopper.stop_all() is False
    assert stopper("a", {TOTAL_SECONDS: 3.5}) is True  # 3.5 + 6.5 = 10.0 >= budget
    assert stopper.stop_all() is True
    assert stopper("b", {TOTAL_SECONDS: 7.0}) is True  # a report in flight: counted, and stopped


def test_stops_at_the_first_report_that_reaches_the_budget() -> None:
    budget, epoch_s = 3.5, 0.4
    stopper = ComputeBudgetStopper(budget)
    seconds = {"a": 0.0, "b": 0.0}
    decisions = []
    for step in range(20):
        trial = "ab"[step % 2]
        seconds[trial] += epoch_s
        decisions.append(stopper(trial, {TOTAL_SECONDS: seconds[trial], EPOCH: step}))
        if decisions[-1]:
            break
    assert decisions[-1] is True and not any(decisions[:-1])
    spent = sum(seconds.values())
    assert budget <= spent < budget + epoch_s  # within one report of the budget
    assert stopper.spent_s == pytest.approx(spent)


@pytest.mark.parametrize(
    ("kwargs", "regex"),
    [
        ({"budget_s": 0.0}, r"budget_s must be a finite number of seconds > 0, but got 0.0"),
        ({"budget_s": -5}, r"budget_s .* but got -5"),
        ({"budget_s": float("nan")}, r"budget_s .* but got nan"),
        ({"budget_s": float("inf")}, r"budget_s .* but got inf"),
        ({"budget_s": "60"}, r"budget_s .* but got '60'"),
        ({"budget_s": 1.0, "time_key": ""}, r"time_key must be the name of a reported metric"),
        ({"budget_s": 1.0, "already_spent_s": -1.0}, r"already_spent_s must be .* >= 0, but got -1.0"),
    ],
)
def test_bad_arguments_raise_value_error_with_value_and_fix(kwargs: dict[str, Any], regex: str) -> None:
    with pytest.raises(ValueError, match=regex) as info:
        ComputeBudgetStopper(**kwargs)
    assert "Fix:" in str(info.value)


def test_already_spent_compute_counts_towards_the_budget() -> None:
    stopper = ComputeBudgetStopper(10.0, already_spent_s=9.0)
    assert stopper.spent_s == 9.0 and stopper.stop_all() is False
    assert stopper("c", {TOTAL_SECONDS: 1.0}) is True
    assert ComputeBudgetStopper(1.0, already_spent_s=1.0).stop_all() is True


def test_missing_or_bad_values_are_not_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    stopper = ComputeBudgetStopper(1.0)
    with caplog.at_level(logging.WARNING):
        for result in ({"loss": 0.1}, {"loss": 0.1}, {TOTAL_SECONDS: float("nan")}, {TOTAL_SECONDS: -1.0}):
            assert stopper("a", result) is False
        assert stopper("b", {TOTAL_SECONDS: float("inf")}) is False
    assert stopper.spent_s == 0.0
    assert caplog.text.count("trial a") == 1 and caplog.text.count("trial b") == 1
    assert TOTAL_SECONDS in caplog.text


def test_nested_result_and_custom_key() -> None:
    stopper = ComputeBudgetStopper(5.0)
    assert stopper("a", {"time": {"total_s": 2.0}}) is False
    assert stopper.spent_s == 2.0
    custom = ComputeBudgetStopper(5.0, time_key="my_seconds")
    assert custom("a", {"my_seconds": 6.0}) is True


def test_a_restarted_trial_keeps_the_compute_it_lost() -> None:
    stopper = ComputeBudgetStopper(100.0)
    stopper("a", {TOTAL_SECONDS: 10.0})
    stopper("a", {TOTAL_SECONDS: 2.0})  # restarted from scratch: 10 s were spent and lost
    assert stopper.spent_s == pytest.approx(10.0)
    stopper("a", {TOTAL_SECONDS: 5.0})
    assert stopper.spent_s == pytest.approx(13.0)  # true value 15: short by the first new report only


@pytest.mark.parametrize("dumps", [pickle.dumps, ray.cloudpickle.dumps])
def test_pickles_with_its_state(dumps: Any) -> None:
    stopper = ComputeBudgetStopper(4.0, already_spent_s=0.5)
    stopper("a", {TOTAL_SECONDS: 1.0})
    copy = pickle.loads(dumps(stopper))
    assert copy.spent_s == pytest.approx(1.5) and copy.budget_s == 4.0
    assert copy("b", {TOTAL_SECONDS: 2.5}) is True
    assert "ComputeBudgetStopper(budget_s=4.0" in repr(copy)


def test_a_repeated_epoch_counts_once_by_its_last_report() -> None:
    """A trial restored from its checkpoint (after a crash or a killed driver) redoes epochs: fed the
    journal's rows (each epoch twice), the stopper counts each (trial, epoch) once."""
    stopper = ComputeBudgetStopper(budget_s=10.0)
    rows = [{"trial_id": "a", EPOCH: e, EPOCH_SECONDS: 1.0} for e in (1, 2, 3)]
    for row in rows + rows:
        stopper.record(row["trial_id"], row)
    assert stopper.spent_s == pytest.approx(3.0)
    assert not stopper("a", {EPOCH: 3, EPOCH_SECONDS: 1.5})  # the redone epoch replaces the first report
    assert stopper.spent_s == pytest.approx(3.5)


def test_several_trials_reporting_the_same_epochs_each_count_without_ray() -> None:
    """Three trials report epochs 1..4 each, interleaved (as concurrent trials do): every (trial, epoch)
    counts, not every epoch once; a redone epoch replaces that trial's report only; the stopper stops at the
    first report that reaches the budget, and agrees with report.selection.compute_spent on the same rows. No
    Ray runs: the stopper is fed result dicts by hand."""
    import pandas as pd
    import ray

    from ray_rthpo.report.selection import compute_spent

    seconds = {"a": 1.0, "b": 2.0, "c": 0.5}  # each trial's epoch seconds
    rows = [{"trial_id": t, EPOCH: e, EPOCH_SECONDS: seconds[t], TOTAL_SECONDS: e * seconds[t]}
            for e in (1, 2, 3, 4) for t in "abc"]
    total = 4 * sum(seconds.values())  # 14.0
    stopper = ComputeBudgetStopper(budget_s=total)
    decisions = [stopper(row["trial_id"], row) for row in rows]
    assert decisions == [False] * (len(rows) - 1) + [True]  # the last report reaches the budget, none before
    assert stopper.spent_s == pytest.approx(total)
    assert compute_spent(pd.DataFrame(rows)) == pytest.approx(total)

    redo = {"trial_id": "b", EPOCH: 2, EPOCH_SECONDS: 3.0, TOTAL_SECONDS: 5.0}  # b restored, redoes epoch 2
    stopper.record("b", redo)
    assert stopper.spent_s == pytest.approx(total + 1.0)  # b's epoch 2 now 3.0 s; a's and c's unchanged
    assert compute_spent(pd.DataFrame([*rows, redo])) == pytest.approx(stopper.spent_s)

    # Below the budget, the same: two trials with identical reports are two trials' compute.
    twin = ComputeBudgetStopper(budget_s=100.0)
    for trial in ("x", "y"):
        for epoch in (1, 2):
            twin.record(trial, {EPOCH: epoch, EPOCH_SECONDS: 1.5})
    assert twin.spent_s == pytest.approx(6.0) and not twin.stop_all()
    assert not ray.is_initialized()


def test_a_pbt_clone_counts_its_own_epochs_not_the_donors_cumulative_seconds() -> None:
    """A population-based-training member that takes over another's checkpoint inherits its cumulative
    time/total_s, but reports its own epoch seconds: only those count."""
    stopper = ComputeBudgetStopper(budget_s=100.0)
    for epoch in (1, 2, 3):
        stopper.record("donor", {EPOCH: epoch, EPOCH_SECONDS: 2.0, TOTAL_SECONDS: 2.0 * epoch})
    stopper.record("clone", {EPOCH: 1, EPOCH_SECONDS: 2.0, TOTAL_SECONDS: 2.0})
    stopper.record("clone", {EPOCH: 4, EPOCH_SECONDS: 2.0, TOTAL_SECONDS: 8.0})  # cloned at 3, runs epoch 4
    assert stopper.spent_s == pytest.approx(3 * 2.0 + 2 * 2.0)


@pytest.mark.parametrize(
    ("result", "has"),
    [
        ({EPOCH: 1, "val/acc": 0.5}, "'epoch' but no 'time/epoch_s', no 'time/total_s'"),
        ({"val/acc": 0.5}, "no 'epoch', no 'time/epoch_s', no 'time/total_s'"),
        ({EPOCH_SECONDS: 1.0}, "no 'epoch' (it has 'time/epoch_s'), no 'time/total_s'"),
        ({EPOCH: 1, EPOCH_SECONDS: float("nan")}, "'epoch' but 'time/epoch_s'=nan"),
    ],
)
def test_a_trainable_without_compute_seconds_is_warned_with_the_keys_read_and_what_follows(
        caplog: pytest.LogCaptureFixture, result: dict[str, Any], has: str) -> None:
    """A function trainable of the user's that reports no time/epoch_s (nor time/total_s) is never stopped by
    the budget: the one warning per trial names the keys the stopper reads (those of the docs), what the
    report has, and that the budget will not stop it."""
    stopper = ComputeBudgetStopper(budget_s=1.0)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert stopper("t", result) is False
    assert stopper.spent_s == 0.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    text = warnings[0]
    assert "it reads 'epoch' with 'time/epoch_s', else the cumulative 'time/total_s'" in text, text
    assert f"this report has {has}" in text, text
    assert "does not count toward the budget of 1 s" in text and "never stopped by the budget" in text, text
    assert "Fix: report {'epoch': N, 'time/epoch_s': that epoch's compute seconds} every epoch" in text, text


def test_the_module_doc_names_the_keys_the_stopper_reads() -> None:
    """The docs' words match the code: the contract names epoch + time/epoch_s first, time/total_s second."""
    from ray_rthpo.tune import budget

    doc = budget.__doc__ or ""
    assert doc.index('"epoch", "time/epoch_s"') < doc.index('"time/total_s"'), doc[:600]
    assert EPOCH_SECONDS == "time/epoch_s" and TOTAL_SECONDS == "time/total_s" and EPOCH == "epoch"


def test_a_pickled_copy_unpickles_as_the_live_stopper_of_its_experiment() -> None:
    """Tune restores its experiment state with the stopper pickled in it; while a live stopper with the same
    key is registered, that copy *is* the live one (journal-seeded), else a copy with the pickled counts."""
    first = ComputeBudgetStopper(budget_s=10.0, key="/runs/x/ray/grid")
    first.record("a", {EPOCH: 1, EPOCH_SECONDS: 2.0})
    blob = ray.cloudpickle.dumps(first)
    live = ComputeBudgetStopper(budget_s=10.0, key="/runs/x/ray/grid")
    live.record("a", {EPOCH: 1, EPOCH_SECONDS: 2.0})
    live.record("a", {EPOCH: 2, EPOCH_SECONDS: 3.0})
    with live.live():
        assert pickle.loads(blob) is live
    restored = pickle.loads(blob)
    assert restored is not live and restored.spent_s == pytest.approx(2.0)
    other = ComputeBudgetStopper(budget_s=10.0)  # no key: always a copy
    with other.live():
        assert pickle.loads(ray.cloudpickle.dumps(other)) is not other


# ------------------------------------------------------------------------------------------------
# A real local Ray

EPOCH_S = 0.2


def _sleepy_trainable(config: dict[str, Any]) -> None:
    """Sleeps EPOCH_S per "epoch" and reports its cumulative seconds, as the training loop does."""
    start = time.perf_counter()
    for epoch in range(1, 200):
        time.sleep(EPOCH_S)
        tune.report({TOTAL_SECONDS: time.perf_counter() - start, EPOCH: epoch})


@pytest.mark.ray
def test_budget_ends_a_ray_experiment_with_concurrent_trials(ray_local: None, tmp_path: Any) -> None:
    budget = 2.0
    stopper = ComputeBudgetStopper(budget)
    tuner = tune.Tuner(
        _sleepy_trainable,
        tune_config=tune.TuneConfig(num_samples=4, max_concurrent_trials=2),
        run_config=tune.RunConfig(stop=stopper, storage_path=str(tmp_path), name="budget", verbose=0),
    )
    results = tuner.fit()  # unstopped, the 4 trials would run 199 epochs each (80 s)

    ran = [r for r in results if r.metrics and TOTAL_SECONDS in r.metrics]
    assert 1 <= len(ran) <= 4 and not results.errors
    finals = [r.metrics[TOTAL_SECONDS] for r in ran]
    assert all(r.metrics[EPOCH] < 199 for r in ran)  # every trial that ran was stopped early

    # One epoch, as the trials measured it: the longest gap between two reports of a trial (its
    # first report counts from 0). A trial can add at most that after the report that spent the budget.
    longest_epoch = max(
        float(np.diff(np.concatenate([[0.0], r.metrics_dataframe[TOTAL_SECONDS].to_numpy()])).max())
        for r in ran
    )
    running = min(len(ran), 2)  # max_concurrent_trials
    total = sum(finals)
    assert total >= budget, finals
    assert stopper.spent_s == pytest.approx(total)  # Ray called this very object, in the driver
    assert total <= budget + running * longest_epoch + 1e-6, (finals, longest_epoch)
    assert longest_epoch >= 0.9 * EPOCH_S  # sanity: the trials' clock saw the sleeps
