"""Outer searchers by name: grid, random, Optuna TPE, Optuna GP (Bayesian optimisation) and skopt BO.

Every searcher takes its space from ``Tuner(param_space=...)`` and its metric/mode from
``TuneConfig`` (always ``val/acc``, ``max``), and is seeded::

    search_alg = build_searcher("optuna_gp", seed=0, options={"n_startup_trials": 4})

| name | what runs | space kinds |
|---|---|---|
| ``grid`` | Ray's ``BasicVariantGenerator``: every ``grid`` value (times ``num_samples``) | grid, choice |
| ``random`` | Ray's ``BasicVariantGenerator`` sampling every domain | any |
| ``optuna_tpe`` | Ray's ``OptunaSearch`` with ``optuna.samplers.TPESampler(seed)`` | sampled |
| ``optuna_gp`` | Ray's ``OptunaSearch`` with ``optuna.samplers.GPSampler(seed)`` | sampled |
| ``skopt`` | :class:`~ray_rthpo.tune.skopt_search.SkOptSearch` (a GP by default) | sampled |

``optuna_gp`` needs scipy and torch. ASHA early stopping is a scheduler, not a searcher: it works on top of
any of these (``scheduler: asha``).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Mapping
from typing import Any

from ray_rthpo.errors import ConfigError
from ray_rthpo.experiment.searchers import OPTIONS, check_options


def build_searcher(name: str, *, seed: int, options: Mapping[str, Any] | None = None,
                   max_concurrent: int = 0, background: bool = False) -> Any:
    """A fresh, seeded Ray ``Searcher`` (or ``SearchAlgorithm``) for ``name`` with ``options`` applied.

    The space, metric and mode are not given here: Tune passes them from ``param_space`` and
    ``TuneConfig``. ``max_concurrent`` is applied here only for grid/random (Ray's
    ``BasicVariantGenerator``); pass it as ``TuneConfig(max_concurrent_trials=...)`` for the others.
    ``background``: skopt fits its surrogate in a thread, off Tune's event loop (``SkOptSearch``'s
    ``background``; the runners set it); the other searchers ignore it.
    Raises :class:`ConfigError` for an unknown name or option.
    """
    check_options(name, options or {})
    opts = {**OPTIONS[name], **dict(options or {})}
    if name in ("none", "grid", "random"):  # none: an empty space, one sample
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    if name == "skopt":
        from ray_rthpo.tune.skopt_search import SkOptSearch

        return SkOptSearch(seed=seed, base_estimator=str(opts["base_estimator"]),
                           n_initial_points=int(opts["n_initial_points"]), acq_func=str(opts["acq_func"]),
                           background=background)
    return _optuna(name, seed, opts)


def to_domain(kind: str, values: list[Any]) -> Any:
    """The Ray Tune domain (or grid-search dict) for a checked ``(kind, values)``."""
    from ray import tune

    if kind == "loguniform":
        return tune.loguniform(values[0], values[1])
    if kind == "uniform":
        return tune.uniform(values[0], values[1])
    if kind == "randint":
        return tune.randint(values[0], values[1])
    if kind == "choice":
        return tune.choice(list(values))
    return tune.grid_search(list(values))


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


__all__ = ["build_searcher", "is_basic", "to_domain"]
