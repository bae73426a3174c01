"""Run one strategy of an experiment as one Ray Tune experiment, under the experiment's compute budget.

    from ray_rthpo.experiment.config import load_experiment
    from ray_rthpo.tune.runner import init_ray, run_strategy

    exp = load_experiment("configs/compare_digits.yaml")
    init_ray()
    outcome = run_strategy(exp, exp.strategies[0], storage_path="/abs/out/ray")
    outcome.table          # pandas DataFrame: one row per reported epoch of every trial

The Tuner gets the strategy's run config as ``param_space`` (flat dotted keys) with its searched keys
replaced by Ray domains, the searcher from :mod:`ray_rthpo.tune.searchers`, ASHA if asked, the metric
``val/acc`` (max), and a :class:`~ray_rthpo.tune.budget.ComputeBudgetStopper` that ends the experiment
once the trials' compute seconds (each (trial, epoch)'s ``time/epoch_s``, once) add up to ``budget_s``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ray_rthpo import metrics as M
from ray_rthpo.config import method_reads
from ray_rthpo.errors import ConfigError, RTHPOError
from ray_rthpo.experiment.config import ExperimentConfig, ResolvedStrategy, Resources, StrategyConfig
from ray_rthpo.report.console import WIDTH
from ray_rthpo.report.journal import append_row, end_cut_line, load_rows
from ray_rthpo.report.selection import RECEIVED_AT, latest_reports
from ray_rthpo.tune.searchers import to_domain

ProgressFn = Callable[[str], None]
#: When Tune started the trial (its actor), on the driver's clock: with received_at it times trial start-up.
STARTED_AT = "time/started_at"
#: Run-config values copied into every row of the results table (beside the searched ones).
CONFIG_COLUMNS = ("lr.method", "lr.eta0", "lr.beta", "lr.gamma", "lr.mu")


@dataclass(frozen=True)
class StrategyOutcome:
    """What one strategy's Tune experiment produced.

    ``compute_s`` is what the budget stopper counted (each (trial, epoch) once, the interrupted run's
    journaled epochs included); ``reported_s`` sums every report, repeats included, so ``reported_s -
    compute_s`` is the compute redone by trials restored from a checkpoint (not charged to the budget).
    ``repeated_reports`` counts those repeats, ``retries`` the trials Tune restarted after a failure
    (a crash, a killed worker) in this process."""

    name: str
    table: pd.DataFrame
    wall_s: float
    errors: tuple[str, ...]
    storage: str
    compute_s: float = 0.0
    reported_s: float = 0.0
    repeated_reports: int = 0
    retries: int = 0


def quiet_ray() -> None:
    """Ray's own console output off (our callback prints one line per trial); set before Tune runs."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Save Tune's experiment state (trials, searcher) often, so a killed driver resumes from recent state.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Checkpoints are deleted by ray_rthpo.tune.checkpoints.retention_callback (num_to_keep=None): keep only
    # their paths in Tune's state, not a copy of every epoch's metrics.
    os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def without_tune_loggers() -> Iterator[None]:
    """Inside: Tune's own per-trial loggers (``result.json``, ``progress.csv``, TensorBoard events) are off,
    unless the caller set ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`` (0 keeps them). The comparison journals
    every reported epoch itself (``trials.csv``); the loggers wrote it again in the driver at every report
    (docs/performance.md). The variable and the log level are restored on exit, so a plain ``tune.run``
    later in the same process is as Ray made it."""
    name = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    before, level = os.environ.get(name), analysis.level
    os.environ.setdefault(name, "1")
    if os.environ[name] == "1":  # Tuner.fit's result grid then finds no result files: a warning per trial
        analysis.setLevel(logging.ERROR)
    try:
        yield
    finally:
        analysis.setLevel(level)
        if before is None:
            os.environ.pop(name, None)


def one_thread_driver() -> None:
    """Limit this (driver) process to one BLAS/OpenMP thread and one torch thread.

    The driver runs only the searchers (small Gaussian-process fits in scikit-optimize and Optuna),
    while the trials use the cores: with several BLAS threads each tiny fit fights the trials for them
    (measured: scikit-optimize's ask/tell 2.6x to 4x slower on a busy 2-core machine)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    import torch

    torch.set_num_threads(1)


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Start a local Ray (or join ``address``, e.g. ``auto`` or ``ray://head:10001``) unless one is
    already initialised, and keep this driver to one compute thread (:func:`one_thread_driver`).
    Returns True when trials run on a cluster this process joined."""
    quiet_ray()
    one_thread_driver()
    import ray

    joined = bool(address or os.environ.get("RAY_ADDRESS"))
    if ray.is_initialized():
        return joined
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING, "configure_logging": True}
    if not joined and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(address=address or None, **kwargs)
    except ConnectionError as err:
        raise RTHPOError(f"cannot join the Ray cluster at --address {address!r}: {err}. Start it with "
                         "`ray start --head` (or `ray up`), or drop --address to run locally.") from None
    return joined


@dataclass(frozen=True)
class TrialResources:
    """What each trial of a strategy asks Ray for, as :func:`trial_resources` checked it against the
    cluster: ``ray``, the trial process's request (``tune.with_resources``), and ``workers``, the
    :class:`~ray_rthpo.tune.train_workers.WorkerSpec` of its Ray Train workers (None: the trial trains in its
    own process)."""

    ray: dict[str, float]
    workers: Any = None

    def trainable(self) -> Any:
        """A fresh function trainable asking for these resources (a new copy each call, see
        :func:`ray_rthpo.tune.trainable.fresh_train_fn`)."""
        from ray import tune

        from ray_rthpo.tune.train_workers import workers_trainable
        from ray_rthpo.tune.trainable import fresh_train_fn

        function = fresh_train_fn() if self.workers is None else workers_trainable(self.workers)
        return tune.with_resources(function, self.ray)


def unchecked_resources(res: Resources) -> TrialResources:
    """``res`` as asked for, without looking at the cluster (GPUs kept even where there are none)."""
    return TrialResources(res.as_ray(), worker_spec(res))


def trial_resources(res: Resources, *, joined: bool, note: ProgressFn = print) -> TrialResources:
    """The per-trial resources ``res`` (an experiment's or a strategy's), checked against the running Ray
    cluster.

    On a local Ray without any GPU, a strategy asking for GPUs runs on the CPU when
    ``resources.cpu_fallback`` is true (a note is printed), else this raises. A request no node can
    ever satisfy raises too (locally) or prints a warning (joined cluster: its autoscaler may add nodes).
    """
    import ray

    if res.workers > 1:
        return _workers_trial_resources(res, joined=joined, note=note)
    wanted = res.as_ray()
    totals = ray.cluster_resources()
    if wanted["gpu"] > 0 and totals.get("GPU", 0) == 0 and not joined:
        if not res.cpu_fallback:
            raise ConfigError(f"resources.gpu is {res.gpu}, but this Ray has no GPU; run on a GPU "
                              "machine or cluster (--address), or set resources.cpu_fallback: true.")
        note(f"note: no GPU in this Ray; trials run on the CPU (resources.gpu {res.gpu} -> 0)")
        wanted = res.as_ray(use_gpu=False)
    names = {"cpu": "CPU", "gpu": "GPU"}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(all(node.get(names.get(k, k), 0) >= v for k, v in wanted.items() if v > 0) for node in nodes):
        message = (f"no Ray node has the resources one trial asks for ({wanted}); nodes have "
                   f"{[{k: v for k, v in n.items() if not k.startswith('node:')} for n in nodes]}. "
                   "Lower resources.cpu/gpu/custom with --set, or add such a node.")
        if not joined:
            raise ConfigError(message)
        note(f"warning: {message}")
    return TrialResources(wanted)


def worker_spec(res: Resources, *, use_gpu: bool = True) -> Any:
    """The :class:`~ray_rthpo.tune.train_workers.WorkerSpec` of trials of ``res`` (``resources.workers`` >
    1), else None."""
    from ray_rthpo.tune.train_workers import WorkerSpec

    if res.workers <= 1:
        return None
    return WorkerSpec(res.workers, cpu=res.worker_cpu, gpu=res.worker_gpu if use_gpu else 0.0)


def _workers_trial_resources(res: Resources, *, joined: bool, note: ProgressFn) -> TrialResources:
    """:func:`trial_resources` for ``resources.workers`` > 1: the trial's own process asks for a sliver of
    a CPU (and ``custom``), Ray Train asks for the workers; checked against the whole cluster (Train may
    spread the workers over nodes)."""
    import ray

    totals = ray.cluster_resources()
    use_gpu = True
    if res.worker_gpu > 0 and totals.get("GPU", 0) == 0 and not joined:
        if not res.cpu_fallback:
            raise ConfigError(f"resources.gpu_per_worker is {res.worker_gpu}, but this Ray has no GPU; "
                              "run on a GPU machine or cluster (--address), or set "
                              "resources.cpu_fallback: true.")
        note(f"note: no GPU in this Ray; the {res.workers} workers of each trial run on the CPU "
             f"(resources.gpu_per_worker {res.worker_gpu} -> 0)")
        use_gpu = False
    spec = worker_spec(res, use_gpu=use_gpu)
    need = {"CPU": spec.workers * spec.cpu + res.as_ray()["cpu"], "GPU": spec.workers * spec.gpu}
    short = {k: (v, totals.get(k, 0.0)) for k, v in need.items() if v > totals.get(k, 0.0) + 1e-9}
    if short:
        needs = ", ".join(f"{v:g} {k}" for k, (v, _) in short.items())
        has = ", ".join(f"{have:g} {k}" for k, (_, have) in short.items())
        message = (f"one trial of {spec.workers} workers (resources.cpu_per_worker {spec.cpu:g}, "
                   f"gpu_per_worker {spec.gpu:g}) and its own process need {needs}, but this Ray has {has}; "
                   "lower resources.workers or the per-worker resources with --set, or add nodes.")
        if not joined:
            raise ConfigError(message)
        note(f"warning: {message}")
    return TrialResources(res.as_ray(), spec)


def param_space(resolved: ResolvedStrategy, repetition: int = 0, *,
                require_gpu: bool = False) -> dict[str, Any]:
    """Ray's ``param_space``: the strategy's flat run config with its searched keys as Ray domains;
    repetition ``r`` trains with ``train.seed + r``. ``require_gpu`` (trials ask for a GPU and
    ``resources.cpu_fallback`` is false) turns ``train.device: auto`` into ``cuda``, so that a trial
    whose GPU turns out unusable fails instead of training on the CPU."""
    space = {key: to_domain(kind, values) for key, (kind, values) in resolved.space.items()}
    # tracking says where trials are logged (by the driver's callbacks), not what they train: no trial key
    flat = {k: v for k, v in resolved.config.to_flat().items() if not k.startswith("tracking.")}
    if require_gpu and flat["train.device"] == "auto":
        flat["train.device"] = "cuda"
    if resolved.strategy.scheduler == "pbt":  # an exploit clones the donor's latest checkpoint: every epoch
        flat["train.checkpoint_every_s"] = 0.0
    return {**flat, "train.seed": int(flat["train.seed"]) + repetition, **space}


def scheduler(resolved: ResolvedStrategy) -> Any:
    """The Ray trial scheduler the strategy names: PBT, ASHA over epochs, or None (FIFO)."""
    strategy = resolved.strategy
    if strategy.scheduler == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        space = resolved.space
        pbt = strategy.pbt
        return PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=pbt.perturbation_interval,
            hyperparam_mutations={key: to_domain(*space[key]) for key in pbt.mutate},
            quantile_fraction=pbt.quantile_fraction, resample_probability=pbt.resample_probability,
            synch=pbt.synch)
    if strategy.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    epochs = resolved.config.train.epochs
    return ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                         grace_period=min(strategy.asha.grace_period, epochs),
                         reduction_factor=strategy.asha.reduction_factor)


def progress_callback_class() -> type:
    from ray import tune

    class ProgressCallback(tune.Callback):
        """Collects every reported epoch as a row (also appended to ``journal``, so a killed driver loses
        nothing that was reported) and prints one line per finished trial."""

        def __init__(self, exp: ExperimentConfig, resolved: ResolvedStrategy, progress: ProgressFn,
                     journal: Path | None = None, rows: list[dict[str, Any]] | None = None,
                     seed: int = 0) -> None:
            self.exp, self.strategy, self.progress, self.seed = exp, resolved.strategy, progress, seed
            self.label = exp.run_name(resolved.strategy, seed)
            self.searched = list(resolved.space)
            self.method = resolved.method
            self.rows: list[dict[str, Any]] = list(rows or [])
            self.journal = journal
            # the journal could not be written (raised through Tune)
            self.write_error: RTHPOError | None = None
            # each (trial, epoch) once, its last report: a trial restored from its checkpoint redoes epochs
            self.epoch_s: dict[tuple[str, Any], float] = {}
            self.reported_s, self.repeated, self.retries = 0.0, 0, 0
            for row in self.rows:
                self._count(str(row["trial_id"]), row)
            self.start = time.time()
            self.ended: set[str] = set()
            self.started: dict[str, float] = {}

        @property
        def compute(self) -> float:
            """Compute seconds reported so far, each (trial, epoch) once."""
            return sum(self.epoch_s.values())

        def _count(self, trial_id: str, result: dict) -> None:
            seconds = result.get(M.EPOCH_SECONDS)
            seconds = float(seconds) if isinstance(seconds, (int, float)) and math.isfinite(seconds) else 0.0
            key = (trial_id, result.get(M.EPOCH))
            self.repeated += key in self.epoch_s
            self.epoch_s[key] = seconds
            self.reported_s += seconds

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.retries += 1  # a crashed trial (or a killed worker) restarts from its last checkpoint

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.started.setdefault(trial.trial_id, time.time())

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            now = time.time()
            row: dict[str, Any] = {"strategy": self.strategy.name, "seed": self.seed, "method": self.method,
                                   "searcher": self.strategy.searcher, "scheduler": self.strategy.scheduler,
                                   "trial_id": trial.trial_id}
            config = trial.config
            row.update({f"searched/{k}": config.get(k) for k in self.searched})
            # a key this method never reads (beta of plain SGD) is left empty, not shown as if it mattered
            row.update({f"config/{k}": config.get(k) if method_reads(self.method, k) else None
                        for k in CONFIG_COLUMNS})
            row.update({k: v for k, v in result.items() if k != "config" and not isinstance(v, dict)})
            row[RECEIVED_AT] = now  # the driver's clock orders reports from every node
            # when Tune started the trial (driver clock)
            row[STARTED_AT] = self.started.get(trial.trial_id, now)
            row["time/wall_elapsed_s"] = now - self.start
            self._count(trial.trial_id, result)
            self.rows.append(row)
            if self.journal is not None:
                try:
                    append_row(self.journal, row)
                except RTHPOError as err:
                    # A full disk: raised through Tune, which ends the run at once (its trials' actors
                    # stopped) and never registers this report's checkpoint; --resume restores Tune's last
                    # snapshot, so this epoch is redone and journaled. Every epoch journaled before is intact.
                    self.rows.pop()
                    self.write_error = err
                    raise

        def _line(self, trial: Any, how: str) -> None:
            if trial.trial_id in self.ended:
                return
            self.ended.add(trial.trial_id)
            last = [r for r in self.rows if r["trial_id"] == trial.trial_id]
            params = ", ".join(f"{k}={_short(trial.config.get(k))}" for k in self.searched)
            if last:
                r = last[-1]
                test = r.get(M.TEST_ACC)
                test_txt = f" test/acc {test:.4f}" if isinstance(test, float) and math.isfinite(test) else ""
                flag = " DIVERGED" if r.get(M.DIVERGED) else ""
                what = f"{r[M.EPOCH]} epochs, val/acc {r[M.VAL_ACC]:.4f}{test_txt}, lr {r[M.LR]:.3g}{flag}"
            else:
                what = "no epoch reported"
            head = f"[{self.label}] trial {trial.trial_id} {how} ({params or 'no search'}): {what}"
            tail = (f"| compute {self.compute:.1f}/{self.exp.budget_s:g}s, "
                    f"wall {time.time() - self.start:.0f}s")
            # at most WIDTH columns a console line: what does not fit goes on indented lines below
            self.progress(textwrap.fill(f"{head}  {tail}", width=WIDTH, subsequent_indent="    ",
                                        break_long_words=False, break_on_hyphens=False))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trial, "done")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trial, "FAILED")

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            for trial in trials:
                if trial.trial_id not in self.ended and any(r["trial_id"] == trial.trial_id
                                                            for r in self.rows):
                    last = max(r.get(M.EPOCH, 0) for r in self.rows if r["trial_id"] == trial.trial_id)
                    complete = last == trial.config.get("train.epochs") or any(
                        r.get(M.DIVERGED) for r in self.rows if r["trial_id"] == trial.trial_id)
                    self._line(trial, "done" if complete else "stopped by the budget")

    return ProgressCallback


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def resume_journal(journal: str | os.PathLike[str] | None, restoring: bool) -> list[dict[str, Any]]:
    """The rows a run's journal already holds when its interrupted Tune experiment is restored (a last line
    cut short by a killed driver removed first); else none, and the journal of a run that never got as far
    as Ray's experiment state is deleted."""
    if journal is None:
        return []
    if restoring:
        end_cut_line(journal)
        return load_rows(journal)
    if Path(journal).exists():
        Path(journal).unlink()
    return []


def error_line(error: BaseException) -> str:
    """One line for a trial's error, as the summary and the progress lines show it: ``Type: last line``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def restored_run_config(tuner: Any) -> Any:
    """The ``RunConfig`` object a ``Tuner.restore``-d tuner will run with (mutable in place).

    ``Tuner.restore`` brings back the RunConfig pickled when the experiment *started*: its stopper has
    forgotten the compute spent since, and its callbacks are copies this process cannot read, so the
    runner puts live ones in. Ray has no public argument for this; the one place that reaches into its
    private ``Tuner._local_tuner`` is here, and ``tests/test_tune_config.py`` fails with this message
    if a Ray upgrade removes it.
    """
    local = getattr(tuner, "_local_tuner", None)
    get = getattr(local, "get_run_config", None)
    if get is None:
        import ray

        raise RuntimeError(f"Ray {ray.__version__} has no Tuner._local_tuner.get_run_config(); "
                           "--resume needs it to put the live stopper and journal back. Pin "
                           "ray[tune]==2.60.* or update ray_rthpo.tune.runner.restored_run_config "
                           "for this Ray.")
    return get()


def tracking_callbacks(exp: ExperimentConfig, experiment_path: str, runs: list[tuple[int, Any]], *,
                       live_sequence: Callable[[str], Any] | None = None) -> list[Any]:
    """The ``RunConfig`` callbacks that log the trials of Tune experiment ``experiment_path``, which runs the
    ``runs`` ((seed, strategy) pairs; ``live_sequence``: the shared sequence's lookup, else one run) to
    MLflow: Ray's
    ``MLflowLoggerCallback`` (:mod:`ray_rthpo.tune.tracking`). None, and nothing imported, when the
    experiment's ``tracking`` is off."""
    if not exp.tracking.enabled:
        return []
    from ray_rthpo.tune import tracking

    return tracking.tracking_callbacks(exp, experiment_path=experiment_path, runs=runs,
                                       live_sequence=live_sequence)


def tracking_env(exp: ExperimentConfig) -> contextlib.AbstractContextManager[None]:
    """Around ``Tuner.fit``: MLflow's file store allowed in this driver when the experiment logs to one
    (:func:`ray_rthpo.tracking.file_store_allowed`; the callbacks log from the driver, never a trial)."""
    from ray_rthpo.tracking import file_store_allowed, tracking_uri

    return file_store_allowed(tracking_uri(exp.tracking.mlflow) if exp.tracking.mlflow is not None else None)


def run_strategy(exp: ExperimentConfig, strategy: StrategyConfig, *, storage_path: str,
                 resources: TrialResources | None = None, progress: ProgressFn = print,
                 journal: str | Path | None = None, resume: bool = False,
                 seed: int | None = None) -> StrategyOutcome:
    """Run ``strategy`` as one Tune experiment (named by ``exp.run_name``) under ``storage_path``
    (absolute or a URI) until its trials are done or its compute reaches ``exp.budget_s``; return every
    reported epoch. ``seed``: the repetition's searcher seed (default ``exp.seed``, the first
    repetition); its trials train with ``train.seed`` shifted by as much (see :func:`param_space`).

    ``resources``: what each trial asks for, as :func:`trial_resources` checked it (default: the
    strategy's resources, ``exp.resources_of(strategy)``, as they are, unchecked).

    ``journal``: a JSON-lines file every reported epoch is appended to as it arrives. ``resume``: when
    ``<storage_path>/<strategy name>`` holds this strategy's interrupted Tune experiment, restore it
    (``Tuner.restore``: finished trials are kept, unfinished and errored ones continue from their last
    checkpoint, the searcher's state is restored) instead of starting afresh; the journal's earlier rows
    are kept and their compute seeds the budget stopper, so the budget is counted once.
    """
    from ray import tune

    from ray_rthpo.tune.budget import ComputeBudgetStopper
    from ray_rthpo.tune.checkpoints import retention_callback
    from ray_rthpo.tune.searchers import build_searcher, is_basic

    quiet_ray()
    resolved = exp.resolved(strategy)
    own = exp.resources_of(strategy)  # the experiment's, unless the strategy names its own
    if resources is None:
        resources = unchecked_resources(own)
    seed = exp.seed if seed is None else int(seed)
    repetition = seed - exp.seed
    name = exp.run_name(strategy, seed)
    experiment_path = f"{storage_path.rstrip('/')}/{name}"
    restoring = resume and tune.Tuner.can_restore(experiment_path)
    earlier = resume_journal(journal, restoring)
    require_gpu = resources.ray.get("gpu", 0.0) > 0 and not own.cpu_fallback
    # keyed by the experiment's path: Tune's restored experiment state unpickles its stopper as this one
    stopper = ComputeBudgetStopper(exp.budget_s, key=experiment_path)
    for row in earlier:  # the interrupted run's compute: each (trial, epoch) once, repeats replace it
        stopper.record(str(row["trial_id"]), row)
    callback = progress_callback_class()(exp, resolved, progress, Path(journal) if journal else None,
                                         earlier, seed)
    trainable = resources.trainable()
    # PBT restores trials from *other* trials' latest checkpoints: keep a few, so that a donor's next report
    # cannot delete the one being cloned.
    retention = retention_callback(keep_last=4 if strategy.scheduler == "pbt" else 1)
    logged = tracking_callbacks(exp, experiment_path, [(seed, strategy)])  # MLflow, if asked
    if restoring:
        progress(f"[{name}] resuming the Tune experiment in {experiment_path} "
                 f"({len({row['trial_id'] for row in earlier})} trial(s) already reported, "
                 f"{stopper.spent_s:.1f} compute-s spent)")
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, param_space=param_space(resolved, repetition,
                                                                                require_gpu=require_gpu))
        run_config = restored_run_config(tuner)
        run_config.callbacks = [callback, retention, *logged]
        run_config.stop = stopper
    else:
        # PBT: the whole population must be alive at once (synchronous PBT pauses members at each
        # perturbation boundary, so a population larger than the free slots takes turns).
        search_alg = build_searcher(strategy.searcher, seed=seed, options=strategy.searcher_options,
                                    max_concurrent=0 if strategy.scheduler == "pbt" else exp.max_concurrent,
                                    background=True)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(resolved, repetition, require_gpu=require_gpu),
            tune_config=tune.TuneConfig(
                metric=M.SELECTION_METRIC, mode=M.SELECTION_MODE,
                search_alg=search_alg, scheduler=scheduler(resolved), num_samples=resolved.num_samples,
                max_concurrent_trials=None if is_basic(search_alg) else exp.max_concurrent,
                # a trial of Ray Train workers waits in TorchTrainer.fit: its process is not reusable
                reuse_actors=resources.workers is None),
            run_config=tune.RunConfig(
                name=name, storage_path=storage_path, verbose=0, callbacks=[callback, retention, *logged],
                stop=stopper,
                failure_config=tune.FailureConfig(max_failures=exp.max_failures),
                # old checkpoints are deleted by `retention`, never one that Tune's saved state still names
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None)),
        )
    if strategy.scheduler == "pbt":
        random.seed(seed)  # PBT draws its exploit partners and perturbations from the driver's `random`
    start = time.time()
    try:
        with stopper.live(), without_tune_loggers(), tracking_env(exp):
            grid = tuner.fit()
    except Exception:
        if callback.write_error is not None:  # Tune wraps it in a TuneError: say it in one line
            raise callback.write_error from None
        raise
    wall = time.time() - start
    errors = tuple(error_line(e) for e in grid.errors)
    return StrategyOutcome(name, latest_reports(pd.DataFrame(callback.rows)), wall, errors, experiment_path,
                           compute_s=stopper.spent_s, reported_s=callback.reported_s,
                           repeated_reports=callback.repeated, retries=callback.retries)


__all__ = ["StrategyOutcome", "init_ray", "TrialResources", "trial_resources", "unchecked_resources",
           "worker_spec",
           "param_space", "scheduler", "restored_run_config",
           "without_tune_loggers", "tracking_callbacks", "tracking_env",
           "run_strategy"]
