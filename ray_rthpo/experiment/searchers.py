"""The outer searchers a strategy may name, the options each accepts, and the checks a strategy's
searcher and space must pass before Ray starts (``ray_rthpo.tune.searchers`` builds them)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from ray_rthpo.errors import ConfigError
from ray_rthpo.experiment.spaces import GRID_KIND

#: scikit-optimize surrogates that run on current scikit-learn and numpy (GBRT and DUMMY do not).
SKOPT_ESTIMATORS = ("GP", "RF", "ET")
#: ``none``: no search, one run of the config's own values (per repetition): what one untuned run gets.
SEARCHERS = ("none", "grid", "random", "optuna_tpe", "optuna_gp", "skopt")
#: Options each searcher accepts (``searcher_options`` in a strategy), with their defaults. Few
#: start-up points by default: the budgets of a comparison allow tens of trials, not hundreds.
OPTIONS: dict[str, dict[str, Any]] = {
    "none": {},
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
    estimator = options.get("base_estimator", "GP") if name == "skopt" else "GP"
    if estimator not in SKOPT_ESTIMATORS:
        raise ConfigError(f"{where}.searcher_options.base_estimator must be one of "
                          f"{', '.join(SKOPT_ESTIMATORS)}, but got {estimator!r} (skopt's GBRT and DUMMY do "
                          "not run on current scikit-learn).")


def check_searcher(name: str, kinds: Iterable[str], options: Mapping[str, Any], where: str) -> None:
    """Check that searcher ``name`` exists, handles every space kind in ``kinds``, and knows ``options``."""
    check_options(name, options, where)
    kinds = set(kinds)
    if name == "none" and kinds:
        raise ConfigError(f"{where}: searcher none runs the config's own values once per repetition, but the "
                          f"strategy has a space ({sorted(kinds)} entries); remove the space "
                          "(put the values in overrides) or choose a searcher.")
    if name == "grid" and kinds - {GRID_KIND, "choice"}:
        raise ConfigError(f"{where}: searcher grid enumerates values, but the space has "
                          f"{sorted(kinds - {GRID_KIND, 'choice'})} entries; write them as {{grid: [...]}} "
                          "or use searcher: random.")
    if name == "grid" and GRID_KIND not in kinds:
        raise ConfigError(f"{where}: searcher grid needs at least one {{grid: [...]}} entry in its space.")
    if name in ("optuna_tpe", "optuna_gp", "skopt") and GRID_KIND in kinds:
        raise ConfigError(f"{where}: searcher {name} samples its space and cannot take {{grid: "
                          f"[...]}} entries; use {{choice: [...]}} (or loguniform/uniform) instead, or "
                          "searcher: grid.")
    if name in ("optuna_tpe", "optuna_gp", "skopt") and not kinds:
        raise ConfigError(f"{where}: searcher {name} needs a space to search; add one (e.g. "
                          "lr.eta0: {loguniform: [1.0e-3, 1.0]}) or use searcher: random with "
                          "num_samples: 1.")


__all__ = ["SEARCHERS", "OPTIONS", "SKOPT_ESTIMATORS", "check_options", "check_searcher"]
