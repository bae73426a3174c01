"""The typed configuration of a Ray Tune experiment: a base run config, a compute budget, and strategies.

    name: compare_digits
    base: {data: {name: digits}, model: {hidden: [64]}, train: {epochs: 6}}   # or base: digits.yaml
    budget_s: 30          # compute seconds per strategy: time/epoch_s summed over its trials' epochs
    resources: {cpu: 1, gpu: 0}
    max_concurrent: 2
    seed: 0
    strategies:
      - name: rthpo
        method: rthpo
        searcher: random               # grid | random | optuna_tpe | optuna_gp | skopt
        space:
          lr.eta0: {loguniform: [1.0e-3, 1.0]}
          lr.beta: {loguniform: [1.0e-9, 1.0e-1]}
        scheduler: asha                # optional early stopping on top of any searcher
      - name: sgd_pbt                  # population-based training of plain SGD's eta, online
        method: fixed
        searcher: random
        num_samples: 4                 # the population
        scheduler: pbt
        pbt: {perturbation_interval: 1, mutate: [lr.eta0]}
        space:
          lr.eta0: {loguniform: [1.0e-3, 1.0]}

Every strategy gets the same ``budget_s`` and, unless it names its own (``resources: {workers: 2}``: see
:func:`strategy_resources`), the same ``resources``; the searched metric is always ``val/acc`` (maximised).
A plain run config (``configs/digits.yaml``, no ``strategies``) is an experiment with one trial of that
config (``rthpo run``; ``rthpo compare`` refuses it: :func:`config_kind`).
Unknown keys and wrong types fail with the key's path.

Loading a config imports neither torch nor Ray: every error in it is reported before the data layer
(``data.data_dir`` resolution) is imported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ray_rthpo import metrics as M
from ray_rthpo.config import (
    ADOPTABLE_KEYS,
    KEYS_READ_ONLY_BY,
    METHODS,
    Config,
    TrackingConfig,
    config_from_dict,
    load_yaml,
    method_reads,
    parse_override,
)
from ray_rthpo.config_schema import check, check_choice, flatten, from_dict, to_dict
from ray_rthpo.errors import ConfigError
from ray_rthpo.experiment.searchers import check_searcher
from ray_rthpo.experiment.spaces import GRID_KIND, check_space

RUN_SECTIONS = ("data", "model", "optim", "lr", "train", "tracking")
SCHEDULERS = ("fifo", "asha", "pbt")
#: Top-level keys that only an experiment config has (a run config has RUN_SECTIONS only).
EXPERIMENT_KEYS = ("base", "strategies")
#: Top-level keys that only a Table 1 workload (``rthpo table1 --workload``) has.
TABLE1_KEYS = ("workload", "eta0_grid", "beta_grid", "base_overrides")


def config_kind(data: dict[str, Any]) -> str:
    """What a config file's top-level mapping is: ``"empty"`` (an empty file), ``"table1"`` (a Table 1
    workload), ``"experiment"`` (it has ``base`` or ``strategies``) or ``"run"`` (run-config sections
    only)."""
    if not data:
        return "empty"
    if any(key in data for key in TABLE1_KEYS):
        return "table1"
    if any(key in data for key in EXPERIMENT_KEYS):
        return "experiment"
    return "run"


def check_budget_s(value: Any) -> None:
    """Raise ConfigError unless ``value`` is a compute budget: a finite number of seconds > 0."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value <= 0):
        raise ConfigError(f"budget_s must be a finite number of seconds > 0, but got {value!r}. "
                          "Fix: give the compute budget summed over all trials, e.g. budget_s=3600.0.")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Trials a sampling strategy may start at most when num_samples is not given: the budget ends it first.
DEFAULT_MAX_SAMPLES = 1000


#: CPU the trial's own process asks for when its training runs on Ray Train workers (it only waits for
#: them; Tune refuses a request of nothing).
TRIAL_DRIVER_CPU = 0.01


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for. Fractional GPUs (0.25) share a GPU; nothing isolates its memory.

    ``workers: N`` (> 1) runs every trial as a Ray Train ``TorchTrainer`` of N data-parallel workers
    (:mod:`ray_rthpo.tune.train_workers`), each asking ``cpu_per_worker`` CPUs and ``gpu_per_worker`` GPUs;
    the trial's own process then asks for :data:`TRIAL_DRIVER_CPU` and ``custom`` only (``cpu`` is not
    used, ``gpu`` must stay 0). ``workers: 1`` (the default) is the single-process trial; there
    ``cpu_per_worker``/``gpu_per_worker``, when given, are its ``cpu``/``gpu``.
    """

    cpu: float = 1.0
    gpu: float = 0.0
    # Data-parallel Ray Train workers per trial (1: the trial trains in its own process, as always).
    workers: int = 1
    # Each worker's CPUs and GPUs (null: 1 CPU, 0 GPU with workers > 1; cpu/gpu with workers 1).
    cpu_per_worker: float | None = None
    gpu_per_worker: float | None = None
    # Custom Ray resources per trial, e.g. {trial_slot: 1} with a node started as
    # --resources='{"trial_slot": 2}'.
    custom: Any = None
    # When the local Ray has no GPU at all, run trials on the CPU (gpu 0) instead of waiting forever.
    # Never applied when joining a cluster with --address (its autoscaler may still add GPU nodes).
    cpu_fallback: bool = True

    def __post_init__(self) -> None:
        check(math.isfinite(self.cpu) and self.cpu >= 0, f"resources.cpu must be >= 0, but got {self.cpu!r}.")
        check(math.isfinite(self.gpu) and self.gpu >= 0, f"resources.gpu must be >= 0, but got {self.gpu!r}.")
        check(self.gpu <= 1 or float(self.gpu).is_integer(),
              f"resources.gpu above 1 must be a whole number of GPUs, but got {self.gpu!r}.")
        check(self.cpu > 0 or self.gpu > 0, "resources must ask for some cpu or gpu; set resources.cpu: 1.")
        self._check_workers()
        custom = self.custom or {}
        check(isinstance(custom, dict) and all(isinstance(k, str) and isinstance(v, (int, float))
                                                and not isinstance(v, bool) and v >= 0
                                                for k, v in custom.items()),
              f"resources.custom must map resource names to amounts >= 0, but got {self.custom!r}.")

    def _check_workers(self) -> None:
        check(isinstance(self.workers, int) and not isinstance(self.workers, bool) and self.workers >= 1,
              f"resources.workers must be an integer >= 1 (Ray Train workers per trial), but got "
              f"{self.workers!r}.")
        for key in ("cpu_per_worker", "gpu_per_worker"):
            value = getattr(self, key)
            check(value is None or (math.isfinite(value) and value >= 0),
                  f"resources.{key} must be a number >= 0 or null, but got {value!r}.")
        per_gpu = self.gpu_per_worker
        check(per_gpu is None or per_gpu <= 1 or float(per_gpu).is_integer(),
              f"resources.gpu_per_worker above 1 must be a whole number of GPUs, but got {per_gpu!r}.")
        if self.workers > 1:
            check(self.gpu == 0, f"resources.gpu is {self.gpu!r}, but with resources.workers {self.workers} "
                  "the GPUs are the workers': set resources.gpu_per_worker instead (and remove "
                  "resources.gpu).")
            check(self.worker_cpu > 0 or self.worker_gpu > 0,
                  "resources.cpu_per_worker and gpu_per_worker are both 0; give each worker some, e.g. "
                  "resources.cpu_per_worker: 1.")

    @property
    def worker_cpu(self) -> float:
        """CPUs of each Ray Train worker (``workers`` > 1), or of the trial (``workers`` 1)."""
        if self.cpu_per_worker is not None:
            return float(self.cpu_per_worker)
        return 1.0 if self.workers > 1 else float(self.cpu)

    @property
    def worker_gpu(self) -> float:
        """GPUs of each Ray Train worker (``workers`` > 1), or of the trial (``workers`` 1)."""
        if self.gpu_per_worker is not None:
            return float(self.gpu_per_worker)
        return 0.0 if self.workers > 1 else float(self.gpu)

    def as_ray(self, *, use_gpu: bool = True) -> dict[str, float]:
        """The per-trial resource dict for ``tune.with_resources`` (``gpu`` dropped when ``use_gpu`` is
        False).

        With ``workers`` > 1 it is the trial's own process (:data:`TRIAL_DRIVER_CPU`, no GPU, ``custom``): the
        workers' resources are asked for by Ray Train (:meth:`per_worker`)."""
        if self.workers > 1:
            out = {"cpu": TRIAL_DRIVER_CPU, "gpu": 0.0}
        else:
            out = {"cpu": self.worker_cpu, "gpu": self.worker_gpu if use_gpu else 0.0}
        out.update({k: float(v) for k, v in (self.custom or {}).items()})
        return out

    def per_worker(self, *, use_gpu: bool = True) -> dict[str, float]:
        """Each Ray Train worker's ``{"CPU": c, "GPU": g}`` (``GPU`` left out when 0 or ``use_gpu`` is
        False)."""
        out = {"CPU": self.worker_cpu}
        if use_gpu and self.worker_gpu > 0:
            out["GPU"] = self.worker_gpu
        return out


@dataclass(frozen=True)
class AshaConfig:
    """Asynchronous successive halving over epochs (Ray's ASHAScheduler); max_t is train.epochs."""

    grace_period: int = 1
    reduction_factor: float = 3.0

    def __post_init__(self) -> None:
        check(self.grace_period >= 1,
              f"asha.grace_period must be an integer >= 1, but got {self.grace_period!r}.")
        check(self.reduction_factor > 1,
              f"asha.reduction_factor must be > 1, but got {self.reduction_factor!r}.")


@dataclass(frozen=True)
class PbtConfig:
    """Population-based training (Ray's PopulationBasedTraining) over epochs: ``num_samples`` trials
    train at once; every ``perturbation_interval`` epochs a trial in the bottom ``quantile_fraction``
    (by val/acc) continues from the checkpoint of one in the top fraction, with each key of ``mutate``
    perturbed (x0.8 or x1.2) or, with ``resample_probability``, redrawn from the strategy's space.
    The compute of every epoch of every trial counts against the budget once (cloned epochs are not
    counted again)."""

    perturbation_interval: int = 1
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25
    # Run-config keys PBT mutates; each must be in the strategy's space (its initial distribution).
    mutate: tuple[str, ...] = ("lr.eta0",)
    # Synchronous PBT: members wait for each other at every perturbation boundary (paused, freeing their
    # slot), so the population may be larger than the trials that fit at once, and decisions reproduce.
    synch: bool = True

    def __post_init__(self) -> None:
        check(self.perturbation_interval >= 1,
              "pbt.perturbation_interval must be an integer >= 1 (epochs), but got "
              f"{self.perturbation_interval!r}.")
        check(0 < self.quantile_fraction <= 0.5,
              f"pbt.quantile_fraction must be in (0, 0.5], but got {self.quantile_fraction!r}.")
        check(0 <= self.resample_probability <= 1,
              f"pbt.resample_probability must be in [0, 1], but got {self.resample_probability!r}.")
        check(len(self.mutate) > 0, "pbt.mutate is empty; list the keys to mutate, e.g. [lr.eta0].")
        for key in self.mutate:
            check(key in ADOPTABLE_KEYS, f"pbt.mutate holds {key!r}, which a running trial cannot take over; "
                  f"mutate only learning-rate keys: {', '.join(ADOPTABLE_KEYS)}.")


@dataclass(frozen=True)
class StrategyConfig:
    """One way of choosing the learning rate: a method, a searcher over its space, a scheduler."""

    name: str = ""
    # lr.method of every trial (null: the base config's).
    method: str | None = None
    searcher: str = "random"
    # Trials to start at most (null: 1 for grid or an empty space, else DEFAULT_MAX_SAMPLES: the budget
    # ends it).
    num_samples: int | None = None
    # Run-config key -> {loguniform|uniform|randint|choice|grid: [...]} (see ray_rthpo.experiment.spaces).
    space: Any = None
    searcher_options: Any = None
    scheduler: str = "fifo"
    asha: AshaConfig = field(default_factory=AshaConfig)
    pbt: PbtConfig = field(default_factory=PbtConfig)
    # Run-config values for this strategy only (flat dotted keys or sections), e.g. {train.epochs: 4}.
    overrides: Any = None
    # What this strategy's trials ask Ray for, over the experiment's resources (strategy_resources), e.g.
    # {workers: 2, cpu_per_worker: 1}; null: the experiment's.
    resources: Any = None

    def __post_init__(self) -> None:
        check(isinstance(self.name, str) and bool(_NAME.match(self.name)),
              f"strategies[].name must be letters, digits, '_', '-' or '.', but got {self.name!r}.")
        if self.method is not None:
            check_choice(f"strategy {self.name}: method", self.method, METHODS)
        check_choice(f"strategy {self.name}: scheduler", self.scheduler, SCHEDULERS)
        check(self.num_samples is None or self.num_samples >= 1,
              f"strategy {self.name}: num_samples must be null or an integer >= 1, but got "
              f"{self.num_samples!r}.")
        for key in ("space", "searcher_options", "overrides", "resources"):
            value = getattr(self, key)
            check(value is None or isinstance(value, dict),
                  f"strategy {self.name}: {key} must be a mapping, but got {value!r}.")


@dataclass(frozen=True)
class ResolvedStrategy:
    """A strategy with what follows from it worked out once: the run config of its trials before
    searching (base, then method, then overrides), its space checked against that config and its
    searcher, and the number of trials to start at most."""

    strategy: StrategyConfig
    config: Config
    space: dict[str, tuple[str, list[Any]]]
    num_samples: int

    @property
    def name(self) -> str:
        """The strategy's name."""
        return self.strategy.name

    @property
    def method(self) -> str:
        """``lr.method`` of its trials."""
        return self.config.lr.method


def resolve_strategy(base: Config, strategy: StrategyConfig) -> ResolvedStrategy:
    """Resolve ``strategy`` against the experiment's base run config; raises ConfigError naming the
    strategy, the key and the fix when its overrides, space, searcher or PBT settings do not fit."""
    flat: dict[str, Any] = flatten(dict(strategy.overrides or {}))
    if strategy.method is not None:
        flat = {"lr.method": strategy.method, **flat}
    space_keys = strategy.space if isinstance(strategy.space, dict) else {}  # else check_space says so
    for what, keys in (("overrides", flat), ("space", space_keys)):
        tracked = sorted(str(k) for k in keys if str(k).startswith("tracking."))
        check(not tracked, f"strategy {strategy.name}: {what} sets {', '.join(tracked)}, but tracking is one "
              "for the whole experiment; move it to the experiment's top level (tracking: {mlflow: URI}).")
    try:
        config = base.replace(**flat) if flat else base
    except ConfigError as err:
        raise ConfigError(f"strategy {strategy.name}: overrides: {err}") from None
    where = f"strategy {strategy.name}: space"
    space = check_space(strategy.space or {}, config, where)
    for key in space:
        if not method_reads(config.lr.method, key):
            raise ConfigError(f"{where}.{key} has no effect with lr.method {config.lr.method}; remove it "
                              f"(it is read by {', '.join(KEYS_READ_ONLY_BY[key])} only) so the budget "
                              "is not spent on it.")
    check_searcher(strategy.searcher, [kind for kind, _ in space.values()],
                   strategy.searcher_options or {}, f"strategy {strategy.name}")
    if strategy.scheduler == "pbt":
        _check_pbt(strategy, config, space)
    if strategy.searcher == "none":
        check(strategy.num_samples in (None, 1), f"strategy {strategy.name}: searcher none is one run per "
              f"repetition, but num_samples is {strategy.num_samples!r}; remove num_samples (use seeds: N to "
              "repeat it).")
        check(strategy.scheduler == "fifo",
              f"strategy {strategy.name}: searcher none is one run, so scheduler "
              f"{strategy.scheduler} has nothing to schedule; remove it.")
        num_samples = 1
    elif strategy.num_samples is not None:
        num_samples = strategy.num_samples
    elif not space or any(kind == GRID_KIND for kind, _ in space.values()):
        num_samples = 1
    else:
        num_samples = DEFAULT_MAX_SAMPLES
    return ResolvedStrategy(strategy, config, space, num_samples)


#: The keys of ``resources`` that say what one trial is made of; a strategy that sets ``workers`` takes none
#: of them from the experiment (:func:`strategy_resources`).
TRIAL_SHAPE_KEYS = ("cpu", "gpu", "cpu_per_worker", "gpu_per_worker")


def strategy_resources(base: Resources, strategy: StrategyConfig) -> Resources:
    """What each trial of ``strategy`` asks Ray for: the experiment's ``base`` resources with the strategy's
    own ``resources`` keys over them. A strategy that sets ``workers`` sets the whole shape of its trials: it
    takes ``custom`` and ``cpu_fallback`` from the experiment, but none of ``cpu``, ``gpu``,
    ``cpu_per_worker``, ``gpu_per_worker`` (they describe the experiment's trials, not its own). Raises
    ConfigError naming the strategy, the key and the fix."""
    own = dict(strategy.resources or {})
    if not own:
        return base
    inherited = {k: v for k, v in to_dict(base).items() if v is not None}
    if "workers" in own:
        inherited = {k: v for k, v in inherited.items() if k not in TRIAL_SHAPE_KEYS}
    try:
        return from_dict(Resources, {**inherited, **own}, "resources")
    except ConfigError as err:
        raise ConfigError(f"strategy {strategy.name}: {err}") from None


def _check_pbt(strategy: StrategyConfig, config: Config, space: dict[str, tuple[str, list[Any]]]) -> None:
    where = f"strategy {strategy.name}"
    check(strategy.searcher in ("random", "grid"),
          f"{where}: scheduler pbt draws its initial population itself and Ray refuses a search algorithm "
          f"beside it, but searcher is {strategy.searcher!r}; set searcher: random.")
    check(strategy.num_samples is not None and strategy.num_samples >= 2,
          f"{where}: scheduler pbt needs num_samples: the population size (>= 2), but got "
          f"{strategy.num_samples!r}; set e.g. num_samples: 4.")
    for key in strategy.pbt.mutate:
        check(key in space, f"{where}: pbt.mutate holds {key!r}, which is not in the strategy's space; add "
              f"it (e.g. {key}: {{loguniform: [1.0e-3, 1.0]}}): PBT draws the population and resamples "
              "from it.")
    check(config.train.epochs > strategy.pbt.perturbation_interval,
          f"{where}: pbt.perturbation_interval is {strategy.pbt.perturbation_interval} epochs, but "
          f"train.epochs is {config.train.epochs}: no perturbation would ever happen; lower the interval "
          "or add epochs.")


@dataclass(frozen=True)
class ExperimentConfig:
    """A Tune experiment per strategy, all under the same compute budget (and the same resources, unless a
    strategy names its own)."""

    name: str = "experiment"
    # The run config every trial starts from (a Config once loaded; sections or a path in YAML).
    base: Any = None
    # Compute seconds per strategy: each (trial, epoch)'s time/epoch_s, once; the experiment ends when spent.
    budget_s: float = 60.0
    resources: Resources = field(default_factory=Resources)
    # Trials running at once per strategy (the budget counts compute, so this changes wall time only).
    max_concurrent: int = 2
    # Searcher seed of the first repetition; repetition r uses seed + r for the searcher and
    # train.seed + r for its trials (the same values for every strategy: paired comparisons).
    seed: int = 0
    # Repetitions of every strategy, each under the full budget_s (rthpo compare --seeds N).
    seeds: int = 1
    # Validation accuracy whose first reaching summary.md times (compute seconds per strategy); null: none.
    target_val_acc: float | None = None
    # Always val/acc: the test set is never used to choose anything.
    metric: str = M.SELECTION_METRIC
    # Retries of a crashed trial (from its last checkpoint).
    max_failures: int = 1
    # Ray storage (checkpoints, Ray's own result files). null: <output>/ray. Multi-node: s3://... or NFS.
    storage_path: str | None = None
    # Where every trial's parameters and per-epoch metrics are logged ({mlflow: URI, experiment: NAME}),
    # through Ray Tune's MLflowLoggerCallback (docs/tracking.md). Unset: the base run config's tracking.
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    strategies: tuple[StrategyConfig, ...] = ()

    def __post_init__(self) -> None:
        check(isinstance(self.base, Config),
              "experiment base must be a run config (internal: use load_experiment).")
        check_budget_s(self.budget_s)
        check(self.max_concurrent >= 1,
              f"max_concurrent must be an integer >= 1, but got {self.max_concurrent!r}.")
        check(self.seed >= 0, f"seed must be an integer >= 0, but got {self.seed!r}.")
        check(self.seeds >= 1,
              f"seeds must be an integer >= 1 (repetitions of every strategy), but got {self.seeds!r}.")
        check(self.target_val_acc is None or 0.0 < self.target_val_acc <= 1.0,
              f"target_val_acc must be a validation accuracy in (0, 1] (0.95, not 95) or null, but got "
              f"{self.target_val_acc!r}.")
        check(self.max_failures >= 0,
              f"max_failures must be an integer >= 0, but got {self.max_failures!r}.")
        check(self.metric == M.SELECTION_METRIC,
              f"metric is always {M.SELECTION_METRIC!r} (validation accuracy, "
              f"never test), but got {self.metric!r}; delete the key.")
        check(bool(self.strategies),
              "strategies is empty; list at least one strategy (name, method, searcher, space).")
        names = [s.name for s in self.strategies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        check(not dupes, f"strategy names must be unique, but {dupes} appear twice; rename one.")
        if not self.tracking.enabled and self.base.tracking.enabled:  # a plain run config's own section
            object.__setattr__(self, "tracking", self.base.tracking)
        # Every strategy is resolved here, once: its run config, checked space and trial count, resources.
        object.__setattr__(self, "_resolved",
                           {s.name: resolve_strategy(self.base, s) for s in self.strategies})
        object.__setattr__(self, "_resources",
                           {s.name: strategy_resources(self.resources, s) for s in self.strategies})
        for s in self.strategies:
            workers = self._resources[s.name].workers
            check(workers == 1 or s.scheduler != "pbt",
                  f"strategy {s.name}: scheduler pbt clones Tune checkpoints, but the trials of "
                  f"resources.workers {workers} keep theirs in Ray Train's storage; use scheduler fifo or "
                  "asha, or resources.workers: 1.")

    def strategy(self, name: str) -> StrategyConfig:
        """The strategy called ``name``."""
        for s in self.strategies:
            if s.name == name:
                return s
        raise ConfigError(f"no strategy {name!r}; this experiment has: "
                          f"{', '.join(s.name for s in self.strategies)}.")

    def repetitions(self) -> list[int]:
        """The searcher seed of every repetition: ``seed``, ``seed + 1``, ... (``seeds`` of them)."""
        return [self.seed + r for r in range(self.seeds)]

    def run_name(self, strategy: StrategyConfig | str, seed: int) -> str:
        """The name of one repetition's Tune experiment and journal: the strategy's name, with
        ``-seed<N>`` when the experiment repeats strategies."""
        name = strategy if isinstance(strategy, str) else strategy.name
        return name if self.seeds == 1 else f"{name}-seed{seed}"

    def resolved(self, strategy: StrategyConfig | str) -> ResolvedStrategy:
        """``strategy`` (or the strategy called so) resolved: built once, when this config was."""
        name = strategy if isinstance(strategy, str) else strategy.name
        if name not in self._resolved:
            self.strategy(name)  # raises, naming the strategies there are
        return self._resolved[name]

    def run_config(self, strategy: StrategyConfig | str) -> Config:
        """The run config of ``strategy``'s trials before searching (:attr:`ResolvedStrategy.config`)."""
        return self.resolved(strategy).config

    def space_of(self, strategy: StrategyConfig | str) -> dict[str, tuple[str, list[Any]]]:
        """``{key: (kind, values)}`` of ``strategy``'s checked space (:attr:`ResolvedStrategy.space`)."""
        return dict(self.resolved(strategy).space)

    def resources_of(self, strategy: StrategyConfig | str) -> Resources:
        """What each trial of ``strategy`` asks Ray for (:func:`strategy_resources`: the experiment's
        ``resources`` unless the strategy names its own)."""
        name = strategy if isinstance(strategy, str) else strategy.name
        if name not in self._resources:
            self.strategy(name)  # raises, naming the strategies there are
        return self._resources[name]

    def num_samples(self, strategy: StrategyConfig | str) -> int:
        """Trials to start at most (:attr:`ResolvedStrategy.num_samples`)."""
        return self.resolved(strategy).num_samples

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict for the resolved ``config.yaml`` kept beside the results."""
        from ray_rthpo.config_schema import to_dict

        out = to_dict(self)
        out["base"] = self.base.to_dict()
        return out


def read_base(data: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """``data`` with ``base: path`` replaced by that file's sections (the path is relative to
    ``base_dir``)."""
    base = data.get("base")
    if not isinstance(base, str):
        return data
    path = Path(base).expanduser()
    return {**data, "base": load_yaml(path if path.is_absolute() else (base_dir or Path.cwd()) / path)}


def experiment_from_dict(data: dict[str, Any], *, name: str = "experiment", base_dir: Path | None = None,
                         cwd: Path | None = None, resolve_data: bool = True) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a YAML mapping (strict), resolving ``base: path`` against
    ``base_dir`` and ``data.data_dir`` against ``cwd``. A mapping without ``strategies`` is a run config.

    Every check runs before the data layer (which imports torch) is imported; ``resolve_data=False`` leaves
    the base's ``data.data_dir`` as written and never imports it (a quick check of the config alone)."""
    if not isinstance(data, dict):
        raise ConfigError(f"an experiment config must be a mapping, but got {data!r}.")
    if "strategies" not in data and "base" not in data:
        run = config_from_dict(data)
        data = {"name": name, "base": data, "strategies": [{"name": run.lr.method, "num_samples": 1}]}
    data = read_base(data, base_dir)
    data = {"name": name, **data}
    base = data.get("base")
    if base is None:
        base = {}
    if not isinstance(base, dict):
        raise ConfigError("base must be run-config sections or the path of a run-config YAML, but got "
                          f"{base!r}.")
    _check_budget_text(data.get("budget_s"))
    strategies = data.get("strategies")
    if isinstance(strategies, list):  # a strategy may read other data: make its data_dir absolute too
        strategies = [_resolve_override_data_dir(s, cwd) if isinstance(s, dict) else s for s in strategies]
        data = {**data, "strategies": strategies}
    config = config_from_dict(base)
    # Every error of the config is raised here, before the data layer (and with it torch) is imported.
    exp = from_dict(ExperimentConfig, {**data, "base": config})
    if not resolve_data:
        return exp
    from ray_rthpo.data.paths import resolve_data_dir

    resolved = resolve_data_dir(config, cwd)
    return exp if resolved == config else replace(exp, base=resolved)


def _check_budget_text(value: Any) -> None:
    """``budget_s: nan`` / ``--set budget_s=inf`` arrive as strings (YAML 1.1 spells them ``.nan``, ``.inf``):
    refuse them as the non-finite budgets they mean, not as words."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return  # not a number at all: the schema says so
        if not math.isfinite(number):
            check_budget_s(value)


def _resolve_override_data_dir(strategy: dict[str, Any], cwd: Path | None) -> dict[str, Any]:
    overrides = strategy.get("overrides")
    if not isinstance(overrides, dict):
        return strategy
    flat = flatten(overrides)
    if not isinstance(flat.get("data.data_dir"), str):
        return strategy
    path = Path(flat["data.data_dir"]).expanduser()
    flat["data.data_dir"] = str(path if path.is_absolute() else ((cwd or Path.cwd()) / path).resolve())
    return {**strategy, "overrides": flat}


def set_path(node: Any, parts: list[str], value: Any, key: str) -> dict[str, Any]:
    """A copy of mapping ``node`` with ``node[parts[0]][parts[1]]... = value`` (the last level replaced)."""
    if node is None:
        node = {}
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: {node!r} is not a section that can hold '{'.'.join(parts)}'.")
    if len(parts) == 1:
        return {**node, parts[0]: value}
    return {**node, parts[0]: set_path(node.get(parts[0]), parts[1:], value, key)}


def apply_override(data: dict[str, Any], text: str) -> dict[str, Any]:
    """Apply one ``--set key=value`` to a raw experiment mapping (the value replaces what was there).

    ``lr.eta0=0.1`` (a run-config section) goes to ``base``; ``strategies.NAME.num_samples=8`` and
    ``strategies.NAME.space.lr.beta={loguniform: [1.0e-6, 1.0e-2]}`` to that strategy; anything else
    (``budget_s=120``, ``resources.gpu=0``, ``resources.custom={}``) to the experiment itself.
    """
    key, value = parse_override(text)
    parts = key.split(".")
    if parts[0] == "tracking":  # the experiment's own (a plain run config's section): it wins over base's
        return set_path(data, parts, value, key)
    if parts[0] in RUN_SECTIONS:
        if "strategies" not in data and "base" not in data:  # a plain run config
            return set_path(data, parts, value, key)
        if isinstance(data.get("base"), str):
            raise ConfigError(f"--set {key}: base must be run-config sections here, but got "
                              f"{data['base']!r}.")
        return set_path(data, ["base", *parts], value, key)
    if parts[0] == "strategies":
        name, field_path = (parts[1], parts[2:]) if len(parts) > 2 else ("", [])
        strategies = [dict(s) if isinstance(s, dict) else s for s in data.get("strategies") or []]
        index = next((i for i, s in enumerate(strategies) if isinstance(s, dict) and s.get("name") == name),
                     None)
        if index is None or not field_path:
            known = ", ".join(str(s.get("name")) for s in strategies if isinstance(s, dict))
            raise ConfigError(f"--set {key}: write strategies.NAME.FIELD=value with NAME one of: {known}.")
        if field_path[0] in ("space", "overrides", "searcher_options") and len(field_path) > 1:
            field_path = [field_path[0], ".".join(field_path[1:])]  # their keys are dotted run-config keys
        strategies[index] = set_path(strategies[index], field_path, value, key)
        return {**data, "strategies": strategies}
    return set_path(data, parts, value, key)


def load_experiment(path: str | Path, overrides: list[str] | None = None, *,
                    cwd: Path | None = None, resolve_data: bool = True) -> ExperimentConfig:
    """Load an experiment YAML (or a plain run config) with ``--set`` overrides; strict about keys and types.
    ``resolve_data``: see :func:`experiment_from_dict`."""
    path = Path(path)
    data = load_yaml(path)
    if isinstance(data, dict):
        data = read_base(data, path.parent)
    for text in overrides or []:
        data = apply_override(data, text)
    return experiment_from_dict(data, name=path.stem, base_dir=path.parent, cwd=cwd,
                                resolve_data=resolve_data)


__all__ = ["ExperimentConfig", "StrategyConfig", "ResolvedStrategy", "resolve_strategy", "Resources",
           "strategy_resources", "TRIAL_SHAPE_KEYS",
           "AshaConfig", "PbtConfig", "load_experiment", "experiment_from_dict", "apply_override",
           "check_budget_s", "config_kind", "read_base", "set_path", "SCHEDULERS", "EXPERIMENT_KEYS",
           "TABLE1_KEYS"]
