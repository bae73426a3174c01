"""SequenceScheduler without Ray running: each trial's events reach its own run's scheduler (ASHA) or none
(FIFO), and a run's ASHA rungs survive the sequence's save and restore (ray_rthpo/tune/sequence.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from ray_rthpo import metrics as M
from ray_rthpo.tune.budget import ComputeBudgetStopper
from ray_rthpo.tune.sequence import Run, RunSequence, SequenceScheduler


@dataclass(frozen=True)
class FakeTrial:
    """What the schedulers read of a Tune trial: its id."""

    trial_id: str


def sequence(key: str) -> RunSequence:
    """Two runs: 'fifo' (no scheduler) and 'asha' (grace 1, reduction 2, 4 epochs); trials f* belong to the
    first, a* to the second."""
    runs = [Run(name, name, 0, BasicVariantGenerator(), {}, 1, ComputeBudgetStopper(100.0),
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=4, grace_period=1,
                                        reduction_factor=2) if name == "asha" else None)
            for name in ("fifo", "asha")]
    seq = RunSequence(runs, max_concurrent=2, key=key)
    seq.owner = {"f1": 0, "f2": 0, "a1": 1, "a2": 1, "a3": 1}
    return seq


def result(iteration: int, acc: float) -> dict[str, float]:
    return {"training_iteration": iteration, M.SELECTION_METRIC: acc}


def test_each_trial_goes_to_its_own_runs_scheduler(tmp_path: Path) -> None:
    seq = sequence("unit-route")
    seq.save_to_dir(str(tmp_path))
    seq.restore_from_dir(str(tmp_path))  # registers it as the live sequence of its key, as Tune's calls do
    scheduler = SequenceScheduler("unit-route")
    scheduler.set_search_properties(M.SELECTION_METRIC, M.SELECTION_MODE)
    asha = seq.runs[1].scheduler
    for trial in ("f1", "f2", "a1", "a2"):
        scheduler.on_trial_add(None, FakeTrial(trial))
    assert set(asha._trial_info) == {"a1", "a2"}  # the FIFO run's trials never reach ASHA
    # at ASHA's first rung, a2 below a1 is stopped; the FIFO trials, however bad, continue
    assert scheduler.on_trial_result(None, FakeTrial("a1"), result(1, 0.9)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, FakeTrial("a2"), result(1, 0.1)) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, FakeTrial("f1"), result(1, 0.9)) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, FakeTrial("f2"), result(1, 0.0)) == TrialScheduler.CONTINUE
    # a trial first seen at a result (restored by Tuner.restore before its sequence) is added on the way
    assert scheduler.on_trial_result(None, FakeTrial("a3"), result(1, 0.95)) == TrialScheduler.CONTINUE
    scheduler.on_trial_complete(None, FakeTrial("a2"), result(1, 0.1))
    scheduler.on_trial_remove(None, FakeTrial("f2"))
    assert set(asha._trial_info) == {"a1", "a3"} and "['asha']" in scheduler.debug_string()


def test_a_runs_asha_rungs_are_saved_and_restored_with_the_sequence(tmp_path: Path) -> None:
    seq = sequence("unit-save")
    seq.save_to_dir(str(tmp_path))
    seq.restore_from_dir(str(tmp_path))
    scheduler = SequenceScheduler("unit-save")
    scheduler.set_search_properties(M.SELECTION_METRIC, M.SELECTION_MODE)
    for trial, acc in (("a1", 0.9), ("a2", 0.5)):
        scheduler.on_trial_add(None, FakeTrial(trial))
        scheduler.on_trial_result(None, FakeTrial(trial), result(1, acc))
    seq.save_to_dir(str(tmp_path))

    restored = sequence("unit-save")  # what Tuner.restore unpickles: the sequence as first made
    restored.restore_from_dir(str(tmp_path))
    rungs = {milestone: dict(recorded)
             for milestone, recorded in restored.runs[1].scheduler._brackets[0]._rungs}
    assert rungs[1] == {"a1": 0.9, "a2": 0.5}  # mode max: recorded as they are
    assert restored.runs[0].scheduler is None
    # the restored ASHA decides as the one saved would: a third trial below the rung's cut is stopped
    again = SequenceScheduler("unit-save")
    again.set_search_properties(M.SELECTION_METRIC, M.SELECTION_MODE)
    assert again.on_trial_result(None, FakeTrial("a3"), result(1, 0.2)) == TrialScheduler.STOP


def test_a_saved_sequence_with_other_runs_is_refused_with_the_fix(tmp_path: Path) -> None:
    """Resuming with another run list (another config, or a comparison saved before ASHA runs shared the
    experiment) says which runs differ and what to do."""

    def runs(names: list[str]) -> RunSequence:
        return RunSequence([Run(n, n, 0, BasicVariantGenerator(), {}, 1, ComputeBudgetStopper(1.0))
                            for n in names],
                           max_concurrent=2, key="unit-refuse")

    runs(["grid", "rand"]).save_to_dir(str(tmp_path))
    with pytest.raises(ValueError, match=r"same config and --set values.*\['asha'\]: run it afresh"):
        runs(["grid", "asha", "rand"]).restore_from_dir(str(tmp_path))
