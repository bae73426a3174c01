"""The paper's Table 1 for one workload: its config and the two experiments that produce it (no Ray or torch).

    python experiments/table1.py --workload mlp_mnist --set train.epochs=5 --output runs/table1_mlp_mnist

A workload config (``configs/table1/NAME.yaml``, :class:`Table1Config`) names the run config, the η̄ and
β grids and the sizes of the other rows. :func:`table1_experiments` turns it into two experiments
(:class:`~ray_rthpo.experiment.config.ExperimentConfig`), run one after the other by
:func:`ray_rthpo.table1.run.run_table1`:

1. ``search/``: the paper's rows. First-order (Train), First-order (Val) and RT-HPO each run the full
   η̄ × β grid (Ray's grid search); Grid Search runs the η̄ grid with the config's schedule; AdaDelta one
   run with its default learning rate; BO (scikit-optimize GP) and BO (Optuna TPE) ``bo_trials`` runs
   each, searching η̄ on a log scale over the grid's range. No budget cuts these: every grid completes.
2. ``equal_compute/``: beyond the paper, each under a compute budget equal to the mean compute of one
   RT-HPO run of step 1: Ray's population-based training of plain SGD's η (``pbt_population`` members,
   η mutated every ``pbt_perturbation_interval`` epochs), Prodigy and Schedule-Free SGD. They may run up
   to ``equal_compute_epochs`` epochs; the budget ends them.

Every row selects on validation accuracy; :mod:`ray_rthpo.table1.report` defines each number. The outputs
(``table1.md``, ``table1.csv``, ``runs.csv``, ``table1.json``, ``sensitivity.png``,
``accuracy_vs_compute.png``, ``eta_schedules.png``) are written atomically into the output folder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ray_rthpo.config import Config, config_from_dict, load_yaml
from ray_rthpo.config_schema import check, check_choice, flatten, from_dict
from ray_rthpo.errors import ConfigError, RTHPOError
from ray_rthpo.experiment.config import (
    ExperimentConfig,
    Resources,
    apply_override,
    experiment_from_dict,
    read_base,
    set_path,
)
from ray_rthpo.table1 import report as T

#: Strategy name, row label and row kind of every row, in the table's order.
ROWS: tuple[T.RowSpec, ...] = (
    T.RowSpec("First-order (Train)", "hd_train", "grid2d"),
    T.RowSpec("First-order (Val)", "hd_val", "grid2d"),
    T.RowSpec("RT-HPO", "rthpo", "grid2d"),
    T.RowSpec("Grid Search", "grid", "grid1d"),
    T.RowSpec("AdaDelta", "adadelta", "single"),
    T.RowSpec("BO (scikit-optimize GP)", "bo_skopt", "search"),
    T.RowSpec("BO (Optuna TPE)", "bo_optuna", "search"),
    T.RowSpec("PBT (SGD), RT-HPO's compute", "pbt", "population"),
    T.RowSpec("Prodigy, RT-HPO's compute", "prodigy", "single"),
    T.RowSpec("Schedule-Free SGD, RT-HPO's compute", "schedule_free", "single"),
)
SEARCH_STRATEGIES = ("hd_train", "hd_val", "rthpo", "grid", "adadelta", "bo_skopt", "bo_optuna")
EQUAL_COMPUTE_STRATEGIES = ("pbt", "prodigy", "schedule_free")
#: The row whose mean run compute is the budget of each equal-compute row.
REFERENCE_STRATEGY = "rthpo"
SEARCH_DIR, EQUAL_DIR = "search", "equal_compute"


@dataclass(frozen=True)
class Table1Config:
    """One workload of Table 1: the run config and the grids and sizes of every row."""

    # Title of the workload, e.g. "MLP on MNIST".
    workload: str = ""
    # The run config of every trial (sections, or the path of a run-config YAML, relative to this file;
    # ``base_overrides: {train.epochs: 20}`` in the YAML changes it, before any --set).
    base: Any = None
    # Initial learning rates η̄ of the grids (First-order, RT-HPO, Grid Search) and the BO range.
    eta0_grid: tuple[float, ...] = (1.0e-3, 1.0e-2, 1.0e-1, 1.0)
    # Hyper-learning rates β of the hypergradient grids (log scale, wide: their scale differs by method).
    beta_grid: tuple[float, ...] = (1.0e-6, 1.0e-5, 1.0e-4, 1.0e-3)
    # Grid Search: SGD with this schedule over the η̄ grid (the paper: fixed and exponentially decaying).
    grid_method: str = "exp_decay"
    grid_gamma: float = 0.9
    # AdaDelta's learning rate (1.0: torch's default, the paper's "default parameters").
    adadelta_eta0: float = 1.0
    # Trials of each BO row.
    bo_trials: int = 8
    # Population-based training of SGD's η: members, and epochs between perturbations.
    pbt_population: int = 4
    pbt_perturbation_interval: int = 1
    # Learning rates of the learning-rate-free rows (Prodigy: 1.0 as its authors recommend).
    prodigy_eta0: float = 1.0
    schedule_free_eta0: float = 1.0
    # Epochs the equal-compute rows may run (their budget, RT-HPO's mean run compute, ends them);
    # null: train.epochs.
    equal_compute_epochs: int | None = None
    resources: Resources = field(default_factory=Resources)
    max_concurrent: int = 2
    seed: int = 0
    max_failures: int = 1
    # The paper's Table 1 numbers for this workload: row label -> {fixed_eta, fixed_beta, top, time}.
    paper: Any = None

    def __post_init__(self) -> None:
        check(isinstance(self.workload, str) and bool(self.workload), "workload must name the workload, e.g. "
              "'MLP on MNIST'.")
        check(isinstance(self.base, Config), "table1 base must be a run config (internal: use load_table1).")
        for key in ("eta0_grid", "beta_grid"):
            values = getattr(self, key)
            check(len(values) >= 2 and all(math.isfinite(v) and v > 0 for v in values)
                  and list(values) == sorted(set(values)),
                  f"{key} must hold at least 2 increasing numbers > 0, but got {list(values)!r}.")
        check_choice("grid_method", self.grid_method, ("fixed", "exp_decay", "cosine"))
        check(0 < self.grid_gamma <= 1, f"grid_gamma must be in (0, 1], but got {self.grid_gamma!r}.")
        for key in ("adadelta_eta0", "prodigy_eta0", "schedule_free_eta0"):
            check(getattr(self, key) > 0, f"{key} must be > 0, but got {getattr(self, key)!r}.")
        check(self.bo_trials >= 2, f"bo_trials must be an integer >= 2, but got {self.bo_trials!r}.")
        check(self.pbt_population >= 2,
              f"pbt_population must be an integer >= 2, but got {self.pbt_population!r}.")
        check(self.pbt_perturbation_interval >= 1,
              "pbt_perturbation_interval must be an integer >= 1, but got "
              f"{self.pbt_perturbation_interval!r}.")
        check(self.equal_compute_epochs is None or self.equal_compute_epochs >= 1,
              f"equal_compute_epochs must be null or an integer >= 1, but got {self.equal_compute_epochs!r}.")
        check(self.paper is None or isinstance(self.paper, dict),
              f"paper must map row labels to their numbers, but got {self.paper!r}.")
        labels = {spec.label for spec in ROWS}
        unknown = sorted(set(self.paper or {}) - labels)
        check(not unknown,
              f"paper has rows {unknown} that Table 1 does not have; use: {', '.join(sorted(labels))}.")

    @property
    def epochs(self) -> int:
        """Epochs of one run of the paper's rows."""
        return self.base.train.epochs


def load_table1(path: str | Path, overrides: Sequence[str] = ()) -> Table1Config:
    """Load a workload config, applying ``--set key=value`` overrides (``train.epochs=3`` goes to the run
    config, ``bo_trials=4`` to the workload). Strict about keys and types; errors name the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no Table 1 workload config at {str(path)!r}; the workloads are in "
                          "configs/table1/.")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a Table 1 config must be a mapping, but got {data!r}.")
    data = read_base(data, path.parent)  # base: a run-config path, relative to this file
    base_overrides = data.pop("base_overrides", None) or {}
    if not isinstance(base_overrides, dict):
        raise ConfigError(f"{path}: base_overrides must map run-config keys to values, but got "
                          f"{base_overrides!r}.")
    data["base"] = dict(data.get("base") or {})
    for key, value in flatten(base_overrides).items():
        data = set_path(data, ["base", *key.split(".")], value, key)
    for text in overrides:  # run-config keys (train.epochs=3) go to base, the rest to the workload
        data = apply_override(data, text)
    return from_dict(Table1Config, {**data, "base": config_from_dict(data["base"])})


def _grid_space(values: Sequence[float]) -> dict[str, Any]:
    return {"grid": [float(v) for v in values]}


def table1_experiments(cfg: Table1Config, *, cwd: Path | None = None,
                       reference_run_s: float | None = None,
                       ) -> tuple[ExperimentConfig, ExperimentConfig | None]:
    """The two experiments of a workload: the paper's rows (no budget cut: every grid completes) and,
    when ``reference_run_s`` (the mean compute seconds of one RT-HPO run) is known, the equal-compute
    rows under that budget."""
    base = cfg.base.to_dict()
    eta_range = {"loguniform": [float(cfg.eta0_grid[0]), float(cfg.eta0_grid[-1])]}
    grid2d = {"lr.eta0": _grid_space(cfg.eta0_grid), "lr.beta": _grid_space(cfg.beta_grid)}
    sgd_schedule = {"lr.method": cfg.grid_method, "lr.gamma": cfg.grid_gamma}
    resources = {k: getattr(cfg.resources, k) for k in ("cpu", "gpu", "custom", "cpu_fallback")
                 if getattr(cfg.resources, k) is not None}
    common = {"resources": resources,
              "max_concurrent": cfg.max_concurrent, "seed": cfg.seed, "max_failures": cfg.max_failures}
    search = {
        "name": "search", "base": base, "budget_s": 1.0e12, **common,
        "strategies": [
            *({"name": m, "method": m, "searcher": "grid", "space": grid2d}
              for m in ("hd_train", "hd_val", "rthpo")),
            {"name": "grid", "searcher": "grid", "overrides": sgd_schedule,
             "space": {"lr.eta0": _grid_space(cfg.eta0_grid)}},
            {"name": "adadelta", "method": "adadelta", "searcher": "random", "num_samples": 1,
             "overrides": {"lr.eta0": cfg.adadelta_eta0}},
            {"name": "bo_skopt", "searcher": "skopt", "num_samples": cfg.bo_trials, "overrides": sgd_schedule,
             "space": {"lr.eta0": eta_range}},
            {"name": "bo_optuna", "searcher": "optuna_tpe", "num_samples": cfg.bo_trials,
             "overrides": sgd_schedule,
             "space": {"lr.eta0": eta_range}},
        ],
    }
    search_exp = experiment_from_dict(search, name="search", cwd=cwd)
    if reference_run_s is None:
        return search_exp, None
    if not (math.isfinite(reference_run_s) and reference_run_s > 0):
        raise RTHPOError(f"the RT-HPO rows reported no usable compute ({reference_run_s!r} s per run), so "
                         "the equal-compute rows have no budget; check search/trials.csv for failed RT-HPO "
                         "trials.")
    epochs = {"train.epochs": cfg.equal_compute_epochs or cfg.epochs}
    equal = {
        "name": "equal_compute", "base": base, "budget_s": float(reference_run_s), **common,
        "strategies": [
            {"name": "pbt", "method": "fixed", "searcher": "random", "num_samples": cfg.pbt_population,
             "scheduler": "pbt", "overrides": epochs, "space": {"lr.eta0": eta_range},
             "pbt": {"perturbation_interval": cfg.pbt_perturbation_interval, "mutate": ["lr.eta0"]}},
            {"name": "prodigy", "method": "prodigy", "searcher": "random", "num_samples": 1,
             "overrides": {**epochs, "lr.eta0": cfg.prodigy_eta0}},
            {"name": "schedule_free", "method": "schedule_free", "searcher": "random", "num_samples": 1,
             "overrides": {**epochs, "lr.eta0": cfg.schedule_free_eta0}},
        ],
    }
    return search_exp, experiment_from_dict(equal, name="equal_compute", cwd=cwd)


def mean_run_seconds(trials: pd.DataFrame, strategy: str = REFERENCE_STRATEGY) -> float:
    """Mean compute seconds of one run of ``strategy`` (each run's last ``time/total_s``)."""
    runs = T.run_results(trials, strategy)
    return float(runs["compute_s"].mean()) if not runs.empty else math.nan


def caption(cfg: Table1Config, meta: dict[str, Any]) -> str:
    """The caption under the table: the workload, its run settings, both grids, the rows' sizes and the
    device and budget in ``meta`` (``reference_run_s``, ``device``)."""
    eq_epochs = cfg.equal_compute_epochs or cfg.epochs
    return (f"{cfg.workload}: test accuracy of the run chosen on validation accuracy. {cfg.epochs} epoch(s) "
            f"per run, batch {cfg.base.data.batch_size}, vanilla SGD (momentum {cfg.base.optim.momentum:g}, "
            f"weight decay {cfg.base.optim.weight_decay:g}), seed {cfg.base.train.seed}; η̄ grid "
            f"{[T.format_power(v) for v in cfg.eta0_grid]}, "
            f"β grid {[T.format_power(v) for v in cfg.beta_grid]}; "
            f"Grid Search and BO use {cfg.grid_method}"
            f"{f' (γ {cfg.grid_gamma:g} per epoch)' if cfg.grid_method == 'exp_decay' else ''}, "
            f"BO {cfg.bo_trials} "
            f"trials each. The last three rows run up to {eq_epochs} epochs under a budget of "
            f"{meta['reference_run_s']:.1f} compute-s (the mean compute of one RT-HPO run). Time: minutes of "
            "compute for one run (First-order, RT-HPO, AdaDelta, Prodigy, Schedule-Free) or for all runs of "
            "the "
            f"row (Grid Search, BO, PBT), on {meta['device']}. † marks cells that include diverged runs.")


__all__ = ["ROWS", "Table1Config", "load_table1", "table1_experiments", "mean_run_seconds", "caption",
           "SEARCH_STRATEGIES", "EQUAL_COMPUTE_STRATEGIES", "REFERENCE_STRATEGY", "SEARCH_DIR", "EQUAL_DIR"]
