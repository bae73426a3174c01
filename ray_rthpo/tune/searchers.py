"""Outer searchers by name: grid, random, Optuna TPE, Optuna GP (Bayesian optimisation) and skopt BO.

Every searcher takes its space from ``Tuner(param_space=...)`` and its metric/mode from
``TuneConfig`` (always ``val/acc``, ``max``), and is seeded::

    search_alg = build_searcher("optuna_gp", seed=0, options={"n_startup_trials": 4})

| name | what runs | space kinds |
|---|---|---|
| ``grid`` | Ray's ``BasicVariantGenerator``: every ``grid`` value (times ``num_samples``) | grid, choice |
| ``random`` | Ray's ``BasicVariantGenerator`` sampling every domain | any |
| ``optuna_tpe`` | Ray's ``OptunaSearch`` with ``optuna.samplers.TPESampler(seed)`` | sampled |
| ``optuna_gp`` | Ray's ``OptunaSearch`` with ``optuna.samplers.GPSampler(seed)`` (needs scipy, torch) | sampled |
| ``skopt`` | :class:`~ray_rthpo.tune.skopt_search.SkOptSearch` (a GP by default) | sampled |

ASHA early stopping is a scheduler, not a searcher: it works on top of any of these (``scheduler: asha``).
"""

from __future__ import annotations

import difflib
import importlib.util
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from ray_rthpo.errors import ConfigError
from ray_rthpo.tune.spaces import GRID_KIND

SEARCHERS = ("grid", "random", "optuna_tpe", "optuna_gp", "skopt")
#: Options each searcher accepts (``searcher_options`` in a strategy), with their defaults. Few
#: start-up points by default: the budgets of a comparison allow tens of trials, not hundreds.
OPTIONS: dict[str, dict[str, Any]] = {
    "grid": {},
    "random": {},
    "optuna_tpe": {"n_startup_trials": 5, "multivariate": True},
    "optuna_gp": {"n_startup_trials": 5, "deterministic_objective": False},
    "skopt": {"base_estimator": "GP", "n_initial_points": 5, "acq_func": "gp_hedge"},
}


def check_options(name: str, options: Mapping[str, Any], where: str = "strategy") -> None:
    """Check that searcher ``name`` exists and knows every key of ``options``."""
    if name not in SEARCHERS:
        close = difflib.get_close_matches(str(name), SEARCHERS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}.searcher must be one of {', '.join(SEARCHERS)}, but got {name!r}.{hint}")
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}.searcher_options must be a mapping, but got {options!r}.")
    unknown = set(options) - set(OPTIONS[name])
    if unknown:
        allowed = ", ".join(OPTIONS[name]) or "none"
        raise ConfigError(f"{where}.searcher_options: {sorted(unknown)} not known to searcher {name}; "
                          f"it accepts: {allowed}.")


def check_searcher(name: str, kinds: Iterable[str], options: Mapping[str, Any], where: str) -> None:
    """Check that searcher ``name`` exists, handles every space kind in ``kinds``, and knows ``options``."""
    check_options(name, options, where)
    kinds = set(kinds)
    if name == "grid" and kinds - {GRID_KIND, "choice"}:
        raise ConfigError(f"{where}: searcher grid enumerates values, but the space has "
                          f"{sorted(kinds - {GRID_KIND, 'choice'})} entries; write them as {{grid: [...]}} "
                          "or use searcher: random.")
    if name == "grid" and GRID_KIND not in kinds:
        raise ConfigError(f"{where}: searcher grid needs at least one {{grid: [...]}} entry in its space.")
    if name in ("optuna_tpe", "optuna_gp", "skopt") and GRID_KIND in kinds:
        raise ConfigError(f"{where}: searcher {name} samples its space and cannot take {{grid: [...]}} entries; "
                          "use {choice: [...]} (or loguniform/uniform) instead, or searcher: grid.")
    if name in ("optuna_tpe", "optuna_gp", "skopt") and not kinds:
        raise ConfigError(f"{where}: searcher {name} needs a space to search; add one (e.g. "
                          "lr.eta0: {loguniform: [1.0e-3, 1.0]}) or use searcher: random with num_samples: 1.")


def build_searcher(name: str, *, seed: int, options: Mapping[str, Any] | None = None,
                   max_concurrent: int = 0) -> Any:
    """A fresh, seeded Ray ``Searcher`` (or ``SearchAlgorithm``) for ``name`` with ``options`` applied.

    The space, metric and mode are not given here: Tune passes them from ``param_space`` and
    ``TuneConfig``. ``max_concurrent`` is applied here only for grid/random (Ray's
    ``BasicVariantGenerator``); pass it as ``TuneConfig(max_concurrent_trials=...)`` for the others.
    Raises :class:`ConfigError` for an unknown name or option.
    """
    check_options(name, options or {})
    opts = {**OPTIONS[name], **dict(options or {})}
    if name in ("grid", "random"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    if name == "skopt":
        from ray_rthpo.tune.skopt_search import SkOptSearch

        return SkOptSearch(seed=seed, base_estimator=str(opts["base_estimator"]),
                           n_initial_points=int(opts["n_initial_points"]), acq_func=str(opts["acq_func"]))
    return _optuna(name, seed, opts)


def is_basic(search_alg: Any) -> bool:
    """True for Ray's BasicVariantGenerator (grid/random), which limits concurrency itself."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return isinstance(search_alg, BasicVariantGenerator)


def _optuna(name: str, seed: int, opts: Mapping[str, Any]) -> Any:
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as err:  # pragma: no cover - optuna is a dependency
        raise ConfigError(f"searcher {name} needs optuna ({err}); fix: pip install optuna.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    startup = opts["n_startup_trials"]
    if isinstance(startup, bool) or not isinstance(startup, int) or startup < 1:
        raise ConfigError(f"searcher_options.n_startup_trials must be an integer >= 1, but got {startup!r}.")
    if name == "optuna_tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                             multivariate=bool(opts["multivariate"]))
    else:
        if not hasattr(optuna.samplers, "GPSampler"):  # pragma: no cover - optuna >= 3.6 has it
            raise ConfigError(f"searcher optuna_gp needs optuna >= 3.6 (GPSampler); installed: "
                              f"{optuna.__version__}. Fix: pip install -U optuna scipy torch.")
        _require("scipy", "optuna_gp")
        sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup,
                                            deterministic_objective=bool(opts["deterministic_objective"]))
    return OptunaSearch(sampler=sampler)


def _require(module: str, searcher: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"searcher {searcher} needs the package {module!r}, which is not installed; "
                          f"fix: pip install {module}.")


__all__ = ["SEARCHERS", "OPTIONS", "check_options", "check_searcher", "build_searcher", "is_basic"]
