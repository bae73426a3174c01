"""Several runs (strategy, seed) one after the other inside ONE Ray Tune experiment.

A Tune experiment costs seconds to start and end, and every one starts fresh trial processes (each
imports torch and loads its data again); a comparison of 9 strategies x N seeds as 9N experiments
spends more wall time on that than on its budgets (docs/performance.md). :class:`RunSequence` is a
Tune ``SearchAlgorithm`` that holds each run's own searcher and space and hands out their trials in
turn, so one experiment runs them all and its trial processes (``reuse_actors``) serve every run:

* run k starts when run k-1 can start no more trials (its budget is spent or its searcher is done):
  run k-1's last trials may still be running then, so consecutive runs overlap by at most the tail of
  those trials. Waiting for them would leave slots idle at every run's end, and Tune would remove the
  trial processes no pending trial needs: a new one takes seconds to start, and trials shorter than
  that would then run one at a time (measured: docs/performance.md). A run's wall time is from its
  first trial's creation to its last trial's end;
* at most ``max_concurrent`` trials run at once, across runs;
* :class:`SequenceStopper` gives every run its own :class:`~ray_rthpo.tune.budget.ComputeBudgetStopper`:
  a trial stops when its run's budget is spent;
* every trial belongs to one run (:meth:`RunSequence.run_of`); the state (which run, what each made,
  each searcher's own state) is saved with Tune's experiment state, so ``Tuner.restore`` continues a
  sequence where it stopped.

* a run with ASHA early stopping keeps its own ASHA scheduler: :class:`SequenceScheduler` (the
  experiment's scheduler) hands every trial event to the scheduler of the trial's run, and FIFO to the
  others, so ASHA's rungs hold that run's trials only, as in an experiment of its own.

Population-based training cannot share one (it pauses trials and clones checkpoints across the whole
experiment): a PBT run keeps an experiment of its own (``runner.run_strategy``); :func:`in_sequence` says
which runs share.
"""

from __future__ import annotations

import copy
import os
import pickle
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import cloudpickle
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import SearchAlgorithm
from ray.tune.stopper import Stopper

from ray_rthpo import metrics as M
from ray_rthpo.tune.budget import ComputeBudgetStopper

STATE_FILE = "rthpo-sequence-state.pkl"
# Tune may work on a copy of the search algorithm it was given (Tuner.restore unpickles one, and a copy
# is what receives next_trial and restore_from_dir). The copy Tune calls registers itself here under the
# sequence's key, so that the stopper, the progress callback and the end-of-run hook reach the live one.
_LIVE: dict[str, RunSequence] = {}
_HOOKS: dict[str, Callable[[Run], None]] = {}
# key -> {run name: journaled reports}: counted again by every run's stopper right after a restore, since
# Tune's snapshot of the sequence (and of its stoppers) may be a few seconds older than the journals.
_JOURNALED: dict[str, dict[str, list[dict[str, Any]]]] = {}


def trial_error_line(trial: Any) -> str:
    """One line for an errored trial, as ``runner.run_strategy`` words its errors: ``Type: last line``.

    Read from the trial's local error files, which Tune writes before it calls ``on_trial_error``
    (``Trial.get_error`` reads the copy in the storage, which is synced later)."""
    from ray_rthpo.tune.runner import error_line

    try:
        pickled = getattr(trial, "pickled_error_file", None)
        if pickled and os.path.isfile(pickled):
            with open(pickled, "rb") as f:
                return error_line(cloudpickle.load(f))
        path = getattr(trial, "error_file", None)
        text = Path(path).read_text() if path and os.path.isfile(path) else str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - an unreadable error file must not end the comparison
        text = ""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "trial error"


#: The schedulers a run may keep inside the shared experiment (PBT needs an experiment of its own).
SEQUENCE_SCHEDULERS = ("fifo", "asha")


def in_sequence(exp: Any, strategy: Any) -> bool:
    """True when runs of ``strategy`` (a StrategyConfig of the ExperimentConfig ``exp``) share the
    comparison's one Tune experiment: no scheduler, or ASHA (routed per run by :class:`SequenceScheduler`),
    and the experiment's own resources (the sequence's trials all ask Ray for the same). PBT, and a strategy
    that names resources of its own, run in an experiment of their own."""
    return strategy.scheduler in SEQUENCE_SCHEDULERS and exp.resources_of(strategy) == exp.resources


def live_sequence(key: str) -> RunSequence | None:
    """The sequence object Tune is driving for ``key`` (None before Tune first called it)."""
    return _LIVE.get(key)


def set_run_end_hook(key: str, hook: Callable[[Run], None] | None) -> None:
    """Call ``hook(run)`` when a run of the sequence ``key`` ends (None removes it)."""
    if hook is None:
        _HOOKS.pop(key, None)
    else:
        _HOOKS[key] = hook


@dataclass
class Run:
    """One run of a sequence: its name (``exp.run_name``), strategy and seed, its Ray search algorithm
    (a ``BasicVariantGenerator`` or ``SearchGenerator``) over ``param_space``, the trials it may start at
    most, its budget stopper, and what happened (first trial, end, trials made, trials still live)."""

    name: str
    strategy: str
    seed: int
    search_alg: Any
    param_space: dict[str, Any]
    num_samples: int
    stopper: ComputeBudgetStopper
    #: the run's own Ray trial scheduler (ASHA), or None: first-in, first-out
    scheduler: TrialScheduler | None = None
    started_at: float | None = None
    ended_at: float | None = None
    made: int = 0
    live: set[str] = field(default_factory=set)
    #: live trials whose last report is in (finished or diverged): about to end, their slot about to free
    finishing: set[str] = field(default_factory=set)

    @property
    def wall_s(self) -> float:
        """Seconds from its first trial's creation to its last trial's end (0 before it starts)."""
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.time()) - self.started_at

    @property
    def exhausted(self) -> bool:
        """True once the run can start no more trials: its budget is spent or its searcher is done (Ray's
        generators count the samples themselves: ``num_samples`` times every grid point)."""
        return self.stopper.stop_all() or self.search_alg.is_finished()


class RunSequence(SearchAlgorithm):
    """A Tune search algorithm that runs ``runs`` one after the other (see the module doc).

    The hook given to :func:`set_run_end_hook` (or ``on_run_end``) is called once per run, when its last
    trial has ended and it can start no more. ``key`` names the sequence across the copies Tune makes.
    """

    def __init__(self, runs: list[Run], *, max_concurrent: int,
                 on_run_end: Callable[[Run], None] | None = None, key: str | None = None) -> None:
        if not runs:
            raise ValueError("RunSequence needs at least one run.")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, but got {max_concurrent!r}.")
        self.runs = runs
        self.max_concurrent = max_concurrent
        self.key = key or uuid.uuid4().hex
        if on_run_end is not None:
            set_run_end_hook(self.key, on_run_end)
        self.current = 0
        self.owner: dict[str, int] = {}
        self._ended: set[str] = set()

    # ----------------------------------------------------------------- what Tune asks of us
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Give every run's searcher the metric, the mode and its OWN space (not the Tuner's)."""
        for run in self.runs:
            run.search_alg.set_search_properties(metric, mode, copy.deepcopy(run.param_space), **spec)
        return super().set_search_properties(metric, mode, config, **spec)

    def add_configurations(self, experiments: Any) -> None:
        """Give every run's searcher a copy of the experiment with its own space and sample count."""
        from ray.tune.experiment import _convert_to_experiment_list

        (experiment,) = _convert_to_experiment_list(experiments)
        for run in self.runs:
            own = copy.copy(experiment)
            spec = copy.deepcopy(experiment.spec)
            spec["config"], spec["num_samples"] = copy.deepcopy(run.param_space), run.num_samples
            own.spec = spec  # this run's space and samples; the rest (storage, trainable) is shared
            run.search_alg.add_configurations([own])

    def next_trial(self) -> Any:
        """The next trial of the current run, None while it must wait, and finished after the last run."""
        _LIVE[self.key] = self
        while self.current < len(self.runs):
            run = self.runs[self.current]
            if run.exhausted:
                # The next run starts now, beside this one's last trials (they end it: on_trial_complete).
                # Waiting for them would leave slots idle, and worse: Tune removes a trial process that no
                # pending trial needs, and a new one takes seconds to start; a trial shorter than that then
                # always takes the process a finished trial frees, and trials run one at a time.
                if not run.live:
                    self._end(run)
                self.current += 1
                continue
            # A trial that made its last report counts as ended: the next one is then pending when it ends,
            # and Tune hands it the trial process that frees (without a pending trial Tune removes that
            # process when two trials end at once, and short trials then run one at a time).
            if sum(len(r.live - r.finishing) for r in self.runs) >= self.max_concurrent:
                return None
            trial = run.search_alg.next_trial()
            if trial is None:
                return None
            if run.started_at is None:
                run.started_at = time.time()
            run.made += 1
            run.live.add(trial.trial_id)
            self.owner[trial.trial_id] = self.current
            return trial
        self.set_finished()
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Pass the result to the searcher of the trial's run."""
        run = self.run_of(trial_id)
        if run is not None:
            run.search_alg.on_trial_result(trial_id, result)
            if result.get(M.STATUS) in (M.STATUS_FINISHED, M.STATUS_DIVERGED) and trial_id in run.live:
                run.finishing.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Pass the completion to the trial's searcher; end its run when that was its last trial."""
        _LIVE[self.key] = self
        run = self.run_of(trial_id)
        if run is None:
            return
        run.live.discard(trial_id)
        run.finishing.discard(trial_id)
        run.search_alg.on_trial_complete(trial_id, result=result, error=error)
        if run.exhausted and not run.live:
            self._end(run)

    def ended(self, name: str) -> bool:
        """True once the run called ``name`` has ended (its hook called)."""
        return name in self._ended

    def run_of(self, trial_id: str) -> Run | None:
        """The run a trial belongs to (None for a trial this sequence did not make)."""
        index = self.owner.get(trial_id)
        return None if index is None else self.runs[index]

    def _end(self, run: Run) -> None:
        if run.name in self._ended:
            return
        self._ended.add(run.name)
        run.ended_at = time.time()
        hook = _HOOKS.get(self.key)
        if hook is not None:
            hook(run)

    # -------------------------------------------------------------------- saving, restoring
    # Tune saves a search algorithm into the experiment folder (save_to_dir) and, on Tuner.restore, calls
    # restore_from_dir on the copy pickled when the Tuner was made; it does NOT call add_configurations
    # again, and it brings back only the experiment folder's top-level files. So the whole state, every
    # run's searcher included, goes into one file there.
    def save_to_dir(self, dirpath: str, session_str: str = "default") -> None:
        """Save the sequence's position, every run's counts and stopper, and every run's searcher state."""
        state = {"current": self.current, "owner": self.owner, "ended": sorted(self._ended),
                 "runs": [{"name": r.name, "started_at": r.started_at, "ended_at": r.ended_at, "made": r.made,
                           "live": sorted(r.live), "finishing": sorted(r.finishing), "stopper": r.stopper,
                           "scheduler": r.scheduler, "search": _search_state(r.search_alg)}
                          for r in self.runs]}
        tmp = Path(dirpath) / f".{STATE_FILE}.tmp"
        # Ray's generators hold argparse parsers: plain pickle refuses
        tmp.write_bytes(cloudpickle.dumps(state))
        os.replace(tmp, Path(dirpath) / STATE_FILE)

    def has_checkpoint(self, dirpath: str) -> bool:
        """True when ``dirpath`` holds a saved sequence."""
        return (Path(dirpath) / STATE_FILE).is_file()

    def restore_from_dir(self, dirpath: str) -> None:
        """Restore what :meth:`save_to_dir` saved (the runs must be the same, in the same order)."""
        _LIVE[self.key] = self
        state = pickle.loads((Path(dirpath) / STATE_FILE).read_bytes())
        names = [r["name"] for r in state["runs"]]
        if names != [r.name for r in self.runs]:
            extra = sorted({r.name for r in self.runs} - set(names))
            raise ValueError(f"the saved sequence ran {names}, but this one has "
                             f"{[r.name for r in self.runs]}; resume with the same config and --set values. "
                             "(A comparison started by a ray_rthpo from before ASHA runs joined the shared "
                             "experiment, whose ASHA runs had experiments of their own, also differs "
                             f"here{': ' + str(extra) if extra else ''}: run it afresh in a new "
                             "--output folder.)")
        self.current, self.owner, self._ended = state["current"], dict(state["owner"]), set(state["ended"])
        for run, saved in zip(self.runs, state["runs"], strict=True):
            run.started_at, run.ended_at, run.made = saved["started_at"], saved["ended_at"], saved["made"]
            run.live, run.stopper = set(saved["live"]), saved["stopper"]
            run.finishing = set(saved.get("finishing", ()))
            run.scheduler = saved.get("scheduler", run.scheduler)
            _restore_search(run.search_alg, saved["search"])
            for row in _JOURNALED.get(self.key, {}).get(run.name, []):  # each (trial, epoch) once
                run.stopper.record(str(row["trial_id"]), row)


def _search_state(alg: Any) -> dict[str, Any]:
    """A run's search algorithm as plain data: Ray's generator state and, for a model-based searcher, the
    bytes its own ``save`` writes."""
    state: dict[str, Any] = {"alg": alg.get_state()}
    searcher = getattr(alg, "searcher", None)
    if searcher is not None:
        with tempfile.TemporaryDirectory(prefix="rthpo-searcher-") as folder:
            path = os.path.join(folder, "searcher.pkl")
            searcher.save(path)
            state["searcher"] = Path(path).read_bytes()
    return state


def _restore_search(alg: Any, state: dict[str, Any]) -> None:
    alg.set_state(state["alg"])
    if "searcher" in state:
        with tempfile.TemporaryDirectory(prefix="rthpo-searcher-") as folder:
            path = os.path.join(folder, "searcher.pkl")
            Path(path).write_bytes(state["searcher"])
            alg.searcher.restore(path)


class SequenceStopper(Stopper):
    """Each trial is stopped by its own run's compute budget; the experiment ends with the sequence."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Count the report against its run's budget; True (stop the trial) once that budget is spent."""
        sequence = live_sequence(self.key)
        run = None if sequence is None else sequence.run_of(trial_id)
        return False if run is None else run.stopper(trial_id, result)

    def stop_all(self) -> bool:
        """Never: the sequence finishes the experiment when its last run is over."""
        return False


class SequenceScheduler(FIFOScheduler):
    """The experiment's trial scheduler: every event of a trial whose run keeps a scheduler of its own
    (``Run.scheduler``, e.g. ASHA) goes to that scheduler, so its decisions (stop a trial at a rung) see
    that run's trials only; other trials are first-in, first-out. The run schedulers live in the sequence
    (saved and restored with it), found by ``key`` as the stopper finds the budgets."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self._metric_mode: tuple[str | None, str | None] = (None, None)
        self._added: set[str] = set()  # trials handed to their run's scheduler (on_trial_add)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Keep metric and mode for the run schedulers (given to each when it first sees a trial)."""
        self._metric_mode = (metric, mode)
        return super().set_search_properties(metric, mode, **spec)

    def _own(self, controller: Any, trial: Any, *, add: bool = True) -> TrialScheduler | None:
        sequence = live_sequence(self.key)
        run = None if sequence is None else sequence.run_of(trial.trial_id)
        scheduler = None if run is None else run.scheduler
        if scheduler is None:
            return None
        if getattr(scheduler, "metric", None) is None:
            scheduler.set_search_properties(*self._metric_mode)
        if add and trial.trial_id not in self._added:
            # a trial restored by Tuner.restore may report before the sequence it belongs to is restored
            self._added.add(trial.trial_id)
            if not _knows(scheduler, trial.trial_id):
                scheduler.on_trial_add(controller, trial)
        return scheduler

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """Hand the new trial to its run's scheduler (none: FIFO)."""
        self._own(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        """Its run's scheduler decides (CONTINUE or STOP at a rung); FIFO continues."""
        own = self._own(tune_controller, trial)
        return TrialScheduler.CONTINUE if own is None else own.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        """Its run's scheduler records the last result (ASHA's rungs)."""
        own = self._own(tune_controller, trial)
        self._added.discard(trial.trial_id)
        if own is not None:
            own.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        """Its run's scheduler forgets the failed attempt (Tune retries it, calling on_trial_add again)."""
        own = self._own(tune_controller, trial, add=False)
        if own is not None and trial.trial_id in self._added:
            own.on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        """Its run's scheduler forgets the trial."""
        own = self._own(tune_controller, trial, add=False)
        if own is not None and trial.trial_id in self._added:
            self._added.discard(trial.trial_id)
            if _knows(own, trial.trial_id, default=True):
                own.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        """One line: which runs keep a scheduler of their own."""
        sequence = live_sequence(self.key)
        owned = [r.name for r in sequence.runs if r.scheduler is not None] if sequence is not None else []
        return f"SequenceScheduler: FIFO, own schedulers for {owned}"


def _knows(scheduler: TrialScheduler, trial_id: str, default: bool = False) -> bool:
    """Whether ``scheduler`` holds ``trial_id`` (Ray's ASHA keeps its trials in the private ``_trial_info``,
    and fails on a trial it does not hold; ``default`` for a scheduler without such a table)."""
    table = getattr(scheduler, "_trial_info", None)
    return default if table is None else trial_id in table


def _routing_callback(key: str, callbacks: dict[str, Any], announce: Callable[[str], None]) -> Any:
    """A Tune callback that hands every trial event to the callback of the trial's run (by name), and keeps
    the last line of each errored trial's error (``errors``: run name -> lines)."""
    from ray import tune

    class RoutingCallback(tune.Callback):
        def __init__(self) -> None:
            self.announced: set[str] = set()
            self.errors: dict[str, list[str]] = {}

        def _target(self, trial: Any) -> Any:
            sequence = live_sequence(key)
            run = None if sequence is None else sequence.run_of(trial.trial_id)
            if run is None:
                return None
            if run.name not in self.announced:
                self.announced.add(run.name)
                announce(run.name)
                callbacks[run.name].start = time.time()
            return callbacks[run.name]

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            target = self._target(trial)
            if target is not None:
                target.on_trial_start(iteration, trials, trial, **info)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            target = self._target(trial)
            if target is not None:
                target.on_trial_recover(iteration, trials, trial, **info)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            target = self._target(trial)
            if target is not None:
                target.on_trial_result(iteration, trials, trial, result, **info)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            target = self._target(trial)
            if target is not None:
                target.on_trial_complete(iteration, trials, trial, **info)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            target = self._target(trial)
            if target is not None:
                target.on_trial_error(iteration, trials, trial, **info)
                run = live_sequence(key).run_of(trial.trial_id)  # type: ignore[union-attr]
                self.errors.setdefault(run.name, []).append(trial_error_line(trial))

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            sequence = live_sequence(key)
            for name, callback in callbacks.items():
                own = [t for t in trials if sequence is not None
                       and (r := sequence.run_of(t.trial_id)) is not None and r.name == name]
                callback.on_experiment_end(own, **info)

    return RoutingCallback()


def run_sequence(exp: Any, runs: list[tuple[int, Any]], *, storage_path: str, resources: Any,
                 journals: Path, resume: bool, progress: Callable[[str], None],
                 on_run_done: Callable[[str, Any], None],
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the ``runs`` ((seed, strategy) pairs, in order; FIFO or ASHA: :func:`in_sequence`) of the
    experiment ``exp`` as one Tune experiment ``<storage_path>/sequence`` (see the module doc); return
    ``{run name: StrategyOutcome}`` of the runs that ran in this call. ``on_run_done(name, outcome)`` is
    called as each run ends (the comparison writes its done marker and tables then). ``resources``: what
    every trial asks for (a :class:`~ray_rthpo.tune.runner.TrialResources`). ``headers``: run name
    -> how its first progress line names it (default: the name).

    ``resume``: restore the interrupted sequence (``Tuner.restore``: finished trials kept, unfinished ones
    continued from their last checkpoint, every run's searcher, position and budget restored, the
    journals' epochs counted once); without a saved sequence, the runs start afresh.
    """
    import pandas as pd
    from ray import tune
    from ray.tune.search.search_generator import SearchGenerator

    from ray_rthpo.report.selection import latest_reports
    from ray_rthpo.tune.checkpoints import retention_callback
    from ray_rthpo.tune.runner import (
        StrategyOutcome,
        param_space,
        progress_callback_class,
        quiet_ray,
        restored_run_config,
        resume_journal,
        tracking_callbacks,
        tracking_env,
        without_tune_loggers,
    )
    from ray_rthpo.tune.runner import scheduler as run_scheduler  # a run's own ASHA, or None (FIFO)
    from ray_rthpo.tune.searchers import build_searcher, is_basic

    quiet_ray()
    experiment_path = f"{storage_path.rstrip('/')}/sequence"
    restoring = resume and tune.Tuner.can_restore(experiment_path)
    require_gpu = resources.ray.get("gpu", 0.0) > 0 and not exp.resources.cpu_fallback
    callback_class = progress_callback_class()
    sequence_runs: list[Run] = []
    callbacks: dict[str, Any] = {}
    journaled: dict[str, list[dict[str, Any]]] = {}
    for seed, strategy in runs:
        name, resolved = exp.run_name(strategy, seed), exp.resolved(strategy)
        journal = journals / f"{name}.jsonl"
        earlier = journaled[name] = resume_journal(journal, restoring)
        searcher = build_searcher(strategy.searcher, seed=seed, options=strategy.searcher_options,
                                  max_concurrent=0, background=True)
        if is_basic(searcher):
            # Ray names a variant generator's trials by a prefix from uuid1 (the clock): generators made in
            # the same instant share it, and their trials' ids would collide in one experiment. One of our
            # own.
            searcher._uuid_prefix = f"{uuid.uuid4().hex[:5]}_"
        stopper = ComputeBudgetStopper(exp.budget_s)
        for row in earlier:
            stopper.record(str(row["trial_id"]), row)
        sequence_runs.append(Run(name, strategy.name, seed,
                                 searcher if is_basic(searcher) else SearchGenerator(searcher),
                                 param_space(resolved, seed - exp.seed, require_gpu=require_gpu),
                                 resolved.num_samples, stopper, scheduler=run_scheduler(resolved)))
        callbacks[name] = callback_class(exp, resolved, progress, journal, earlier, seed)
    sequence = RunSequence(sequence_runs, max_concurrent=exp.max_concurrent, key=experiment_path)
    _JOURNALED[experiment_path] = journaled
    outcomes: dict[str, Any] = {}

    def outcome(run: Run, errors: tuple[str, ...] = ()) -> Any:
        callback = callbacks[run.name]
        return StrategyOutcome(run.name, latest_reports(pd.DataFrame(callback.rows)), run.wall_s, errors,
                               experiment_path, compute_s=run.stopper.spent_s, reported_s=callback.reported_s,
                               repeated_reports=callback.repeated, retries=callback.retries)

    def done(run: Run) -> None:
        outcomes[run.name] = outcome(run, tuple(router.errors.get(run.name, ())))
        on_run_done(run.name, outcomes[run.name])

    def announce(name: str) -> None:
        run = next(r for r in sequence_runs if r.name == name)
        strategy = exp.strategy(run.strategy)
        by = strategy.searcher + ("" if strategy.scheduler == "fifo" else f" + {strategy.scheduler.upper()}")
        progress(f"== {(headers or {}).get(name, name)}: {exp.run_config(strategy).lr.method} by {by}, "
                 f"budget {exp.budget_s:g} compute-s")

    set_run_end_hook(experiment_path, done)
    router = _routing_callback(experiment_path, callbacks, announce)
    retention = retention_callback(keep_last=1)
    # MLflow, if asked: every trial a run, tagged with the run (strategy, seed) it belongs to
    logged = tracking_callbacks(exp, experiment_path, runs, live_sequence=live_sequence)
    trainable = resources.trainable()
    if restoring:
        progress(f"[sequence] resuming the Tune experiment in {experiment_path} "
                 f"({sum(len({r['trial_id'] for r in rows}) for rows in journaled.values())} trial(s) "
                 f"already reported, {sum(r.stopper.spent_s for r in sequence_runs):.1f} compute-s spent)")
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, param_space=sequence_runs[0].param_space)
        run_config = restored_run_config(tuner)
        run_config.callbacks = [router, retention, *logged]
        run_config.stop = SequenceStopper(experiment_path)
    else:
        tuner = tune.Tuner(
            trainable, param_space=sequence_runs[0].param_space,
            tune_config=tune.TuneConfig(metric=M.SELECTION_METRIC, mode=M.SELECTION_MODE, search_alg=sequence,
                                        scheduler=SequenceScheduler(experiment_path), num_samples=-1,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name="sequence", storage_path=storage_path, verbose=0, callbacks=[router, retention, *logged],
                stop=SequenceStopper(experiment_path),
                failure_config=tune.FailureConfig(max_failures=exp.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    # Tune starts at most one pending trial at a time for a search algorithm of its own kind (its
    # _get_max_pending_trials): allow as many as may run at once, for the life of this experiment.
    pending_before = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(exp.max_concurrent)
    try:
        with without_tune_loggers(), tracking_env(exp):
            grid = tuner.fit()
    except Exception:
        error = next((c.write_error for c in callbacks.values() if c.write_error is not None), None)
        if error is not None:  # Tune wraps it in a TuneError: say it in one line
            raise error from None
        raise
    finally:
        set_run_end_hook(experiment_path, None)
        _JOURNALED.pop(experiment_path, None)
        if pending_before is None:
            os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)
        else:
            os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = pending_before
    live = live_sequence(experiment_path) or sequence
    errors = router.errors
    del grid  # the results are the journals; errors come from the router
    for run in live.runs:
        if run.name in outcomes:
            # an error told after its run ended
            if tuple(errors.get(run.name, ())) != outcomes[run.name].errors:
                outcomes[run.name] = outcome(run, tuple(errors.get(run.name, ())))
                on_run_done(run.name, outcomes[run.name])
        elif run.started_at is not None or live.ended(run.name) or journaled.get(run.name):
            # ended before a driver kill (restored as ended: its hook ran in that session), or the experiment
            # ended under it, or (all its trials over when the driver died) Tune restored nothing to run and
            # never called the sequence: its journaled reports are its outcome
            outcomes[run.name] = outcome(run, tuple(errors.get(run.name, ())))
            on_run_done(run.name, outcomes[run.name])
    return outcomes


__all__ = ["Run", "RunSequence", "SequenceStopper", "SequenceScheduler", "in_sequence", "SEQUENCE_SCHEDULERS",
           "STATE_FILE", "live_sequence", "set_run_end_hook", "run_sequence"]
