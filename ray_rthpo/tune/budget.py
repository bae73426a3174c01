"""Equal-compute accounting: end a Ray Tune experiment when the compute summed over all trials is spent.

A fair comparison of tuning methods gives each the same compute, however it is spread over trials
(one long run of RT-HPO vs. many short runs of a grid, run 1 or 8 at a time). Wall-clock limits
(``TuneConfig(time_budget_s=...)``) do not measure that: they count parallel trials once and idle
time too. This stopper sums what the trials themselves report.

Metric contract (what a trainable must report, at every epoch), one of::

    tune.report({EPOCH: epoch, EPOCH_SECONDS: seconds_of_this_epoch, ...})   # "epoch", "time/epoch_s"
    tune.report({TOTAL_SECONDS: seconds_so_far, ...})                          # "time/total_s"

The first is what ray_rthpo's trainable reports (with both) and what the stopper reads first: each
(trial, epoch) is counted by its ``time/epoch_s``. The second, read when a report lacks ``epoch`` or
``time/epoch_s``, is the cumulative compute seconds this trial has spent so far (training,
hypergradients, evaluation), never reset within a trial; a trial resumed from a checkpoint should
continue from the checkpoint's count. A report with neither is not counted (a warning says so, once
per trial): a trainable that never reports either is never stopped by the budget. Report every epoch:
the experiment can only stop at a report, so the budget is overshot by at most one report interval
per running trial.

Use::

    stopper = ComputeBudgetStopper(budget_s=3600.0)
    tune.Tuner(trainable, tune_config=..., run_config=tune.RunConfig(stop=stopper)).fit()

Each (trial, epoch) counts once. A report that carries ``epoch`` and its own ``time/epoch_s`` (as
every report of ray_rthpo's trainable does) is counted by that epoch's seconds, and a later report of
the same (trial, epoch) replaces it: a trial restored from its checkpoint redoes an epoch it had already
reported, and a population-based-training member that clones another one's checkpoint inherits that
member's cumulative ``time/total_s`` but reports its own epoch seconds. This is the stopper's form of
:func:`ray_rthpo.report.selection.compute_spent`, the one definition of compute spent, and both give
the same number on the same reports. Reports without an epoch (a trainable that only reports its
cumulative seconds) are counted by the cumulative ``time_key`` per trial.

Trials of several Ray Train workers (``resources.workers: N``, :mod:`ray_rthpo.tune.train_workers`) report
``time/epoch_s`` as worker-seconds, N times rank 0's wall seconds (those are ``time/epoch_wall_s``): the
stopper, like ``compute_spent``, counts workers x seconds without knowing N, so a strategy of 4-worker trials
and one of single-process trials spend the same budget on the same compute.

When resuming an interrupted experiment, feed the reports it journaled to :meth:`record` (each once:
a resumed trial's repeated epochs replace them), or pass the compute of trials that will never report
again as ``already_spent_s``.

Tune pickles the stopper with its experiment state and, on ``Tuner.restore``, runs with the *unpickled*
copy (as of its last snapshot), not the one in the restored ``RunConfig``. A stopper given a ``key`` (the
experiment's path) avoids that: while :meth:`live` holds a stopper with the same key in this process, the
unpickled copy *is* that stopper, so the resumed experiment counts with the live one (journal-seeded)::

    stopper = ComputeBudgetStopper(60.0, key=experiment_path)
    for row in journaled_rows:
        stopper.record(row["trial_id"], row)
    with stopper.live():
        tuner.fit()
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

from ray.tune.stopper import Stopper

from ray_rthpo.errors import ConfigError
from ray_rthpo.experiment.config import check_budget_s
from ray_rthpo.metrics import EPOCH, EPOCH_SECONDS, TOTAL_SECONDS
from ray_rthpo.tune.results import lookup

logger = logging.getLogger(__name__)

__all__ = ["ComputeBudgetStopper"]

#: key -> the stopper that a pickled copy with that key becomes when unpickled (see
#: ComputeBudgetStopper.live).
_LIVE: dict[str, ComputeBudgetStopper] = {}


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class ComputeBudgetStopper(Stopper):
    """Stop every trial once the compute seconds summed over all trials reach ``budget_s``.

    The compute spent is ``already_spent_s`` + the seconds of every (trial, epoch) reported (each once,
    its last report; see the module doc) + for reports without an epoch, the latest cumulative seconds
    of each trial and the seconds of restarted trials (below).
    ``__call__`` returns True (stop this trial) and :meth:`stop_all` returns True (stop the
    experiment; Ray then starts no new trial) as soon as that sum is >= ``budget_s``.

    Without epochs, a trial whose cumulative count goes down was restarted (from scratch or from a
    checkpoint): the drop is kept as spent compute, since that work was done and lost, so the count is
    at most one report interval short of the truth, never larger.

    Reports without ``time_key``, or with a NaN, infinite or negative value, are not counted; a
    warning is logged once per trial.

    The stopper is plain data: it pickles (Ray may pickle it with the Tuner state).

    Args:
        budget_s: Compute budget in seconds, summed over all trials; finite and > 0.
        time_key: The metric holding each trial's cumulative compute seconds.
        already_spent_s: Compute already spent by a previous run of this experiment (>= 0).
        increment_key: When given (e.g. ``time/epoch_s``), a report without an epoch adds this metric's
            seconds instead of ``time_key`` being read as a cumulative count.
        key: Names the experiment (its path) for :meth:`live`; None: a pickled copy is always a copy.

    Raises:
        ConfigError (a ValueError): an argument out of range; the message says which and the fix.
    """

    def __init__(self, budget_s: float, time_key: str = TOTAL_SECONDS, already_spent_s: float = 0.0,
                 increment_key: str | None = None, key: str | None = None) -> None:
        check_budget_s(budget_s)
        if not isinstance(time_key, str) or not time_key:
            raise ConfigError(
                f"time_key must be the name of a reported metric, but got {time_key!r}. "
                f"Fix: leave the default {TOTAL_SECONDS!r} (ray_rthpo.metrics.TOTAL_SECONDS)."
            )
        if not _finite(already_spent_s) or already_spent_s < 0:
            raise ConfigError(
                f"already_spent_s must be a finite number of seconds >= 0, but got {already_spent_s!r}. "
                "Fix: pass the compute of the previous run's finished trials, or 0.0."
            )
        if increment_key is not None and (not isinstance(increment_key, str) or not increment_key):
            raise ConfigError(f"increment_key must be the name of a reported metric or None, but got "
                              f"{increment_key!r}. Fix: increment_key='time/epoch_s' "
                              "(metrics.EPOCH_SECONDS).")
        self._budget_s = float(budget_s)
        self._increment_key = increment_key
        self._time_key = increment_key or time_key
        self._already_spent_s = float(already_spent_s)
        self._latest_s: dict[str, float] = {}  # trial id -> latest cumulative seconds (reports without epoch)
        self._epoch_s: dict[str, dict[Any, float]] = {}  # trial id -> epoch -> its seconds (each epoch once)
        self._restarted_s = 0.0  # seconds lost by trials that restarted
        self._warned: set[str] = set()
        self._announced = False
        self._key = key

    # ------------------------------------------------------------------------------- Ray's API

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Record the report's compute; True when the whole budget is spent."""
        self.record(trial_id, result)
        return self.stop_all()

    def record(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """Count one report of ``trial_id`` (see the class doc) without deciding anything."""
        trial_id = str(trial_id)
        epoch = lookup(result, EPOCH) if isinstance(result, Mapping) else None
        epoch_s = lookup(result,
                         self._increment_key or EPOCH_SECONDS) if isinstance(result, Mapping) else None
        if epoch is not None and _finite(epoch_s) and epoch_s >= 0:
            self._epoch_s.setdefault(trial_id, {})[epoch] = float(epoch_s)
            return
        value = lookup(result, self._time_key) if isinstance(result, Mapping) else None
        if value is None:
            self._warn_once(trial_id, self._not_counted(epoch, epoch_s))
        elif not _finite(value) or value < 0:
            self._warn_once(
                trial_id, f"reported {self._time_key!r}={value!r}, not counted (must be finite, >= 0)."
            )
        elif self._increment_key is not None:
            self._latest_s[trial_id] = self._latest_s.get(trial_id, 0.0) + float(value)
        else:
            seconds = float(value)
            previous = self._latest_s.get(trial_id)
            if previous is not None and seconds < previous:
                logger.info(
                    "ComputeBudgetStopper: trial %s's %r went down (%.3f -> %.3f): counted as a restart.",
                    trial_id,
                    self._time_key,
                    previous,
                    seconds,
                )
                self._restarted_s += previous - seconds
            self._latest_s[trial_id] = seconds

    def stop_all(self) -> bool:
        """True once the compute summed over all trials is >= the budget."""
        spent = self.spent_s >= self._budget_s
        if spent and not self._announced:
            self._announced = True
            logger.info(
                "ComputeBudgetStopper: %.3f s of compute spent (budget %.3f s): stopping all trials.",
                self.spent_s,
                self._budget_s,
            )
        return spent

    # ------------------------------------------------------------------------------- resuming

    @contextlib.contextmanager
    def live(self) -> Iterator[ComputeBudgetStopper]:
        """While inside, a pickled stopper with this one's ``key`` unpickles as *this* object (Tune's restored
        experiment state then counts with it). Without a key, nothing changes."""
        if self._key is None:
            yield self
            return
        _LIVE[self._key] = self
        try:
            yield self
        finally:
            if _LIVE.get(self._key) is self:
                del _LIVE[self._key]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_stopper, (type(self), self._key, self.__dict__.copy()))

    # ------------------------------------------------------------------------------- inspection

    @property
    def budget_s(self) -> float:
        """The compute budget in seconds, summed over all trials."""
        return self._budget_s

    @property
    def spent_s(self) -> float:
        """Compute seconds spent so far: previous runs + every (trial, epoch) once + the latest cumulative
        count of trials that report no epoch + restarts of those."""
        epochs = sum(sum(per_epoch.values()) for per_epoch in self._epoch_s.values())
        return self._already_spent_s + self._restarted_s + sum(self._latest_s.values()) + epochs

    def _not_counted(self, epoch: Any, epoch_s: Any) -> str:
        """The warning for a report that cannot be counted: the keys read, what it has, what follows."""
        per_epoch = self._increment_key or EPOCH_SECONDS
        reads = f"{EPOCH!r} with {per_epoch!r}"
        if self._increment_key is None:
            reads += f", else the cumulative {self._time_key!r}"
        if epoch is None:
            has = f"no {EPOCH!r}" + (f", no {per_epoch!r}" if epoch_s is None else f" (it has {per_epoch!r})")
        else:
            has = f"{EPOCH!r} but " + (f"no {per_epoch!r}" if epoch_s is None
                                       else f"{per_epoch!r}={epoch_s!r}")
        if self._increment_key is None:
            has += f", no {self._time_key!r}"
        return (f"reported no compute that the budget can count (it reads {reads}; this report has {has}): "
                f"this trial's compute does not count toward the budget of {self._budget_s:g} s, and an "
                "experiment whose trials never report it is never stopped by the budget (it ends when its "
                "trials do). "
                f"Fix: report {{{EPOCH!r}: N, {per_epoch!r}: that epoch's compute seconds}} every epoch.")

    def _warn_once(self, trial_id: str, message: str) -> None:
        if trial_id not in self._warned:
            self._warned.add(trial_id)
            logger.warning("ComputeBudgetStopper: trial %s %s", trial_id, message)

    def __repr__(self) -> str:
        return (
            f"ComputeBudgetStopper(budget_s={self._budget_s!r}, time_key={self._time_key!r}, "
            f"spent_s={self.spent_s:.3f}, trials={len(self._latest_s)})"
        )


def _unpickle_stopper(cls: type, key: str | None, state: dict[str, Any]) -> ComputeBudgetStopper:
    """The live stopper registered under ``key`` (:meth:`ComputeBudgetStopper.live`), else a copy of
    ``state``."""
    live = _LIVE.get(key) if key is not None else None
    if live is not None:
        return live
    stopper = cls.__new__(cls)
    stopper.__dict__.update(state)
    return stopper
