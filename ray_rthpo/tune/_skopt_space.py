"""Search-space conversion for :class:`ray_rthpo.tune.skopt_search.SkOptSearch`.

Ray Tune domains and skopt dimensions become :class:`_Param` entries (name, path, skopt dimension,
encode/decode); a patched GBRT surrogate works around scikit-optimize 0.10 on current
scikit-learn/numpy. Private to the skopt searcher.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.tune.search import sample as ray_sample

from ray_rthpo.errors import ConfigError

try:
    import skopt
    from skopt.learning import GradientBoostingQuantileRegressor as _SkoptGBRT
    from skopt.space import Categorical as SkCategorical
    from skopt.space import Dimension as SkDimension
    from skopt.space import Integer as SkInteger
    from skopt.space import Real as SkReal
except ImportError:  # pragma: no cover - exercised only where scikit-optimize is missing
    skopt = None
    _SkoptGBRT = object
    SkCategorical = SkDimension = SkInteger = SkReal = None

_INT32_MAX = int(np.iinfo(np.int32).max)


def _require_skopt() -> None:
    """Raise a clear ImportError when scikit-optimize is not installed."""
    if skopt is None:
        raise ImportError(
            "SkOptSearch needs scikit-optimize, which is not installed. "
            "Fix: pip install scikit-optimize (or pip install 'ray_rthpo[...]' with its dependencies)."
        )


class _GBRTQuantileRegressor(_SkoptGBRT):  # type: ignore[misc, valid-type]
    """skopt's GBRT surrogate, patched for scikit-learn >= 1.6 and numpy >= 2.

    Two defects of scikit-optimize 0.10.2, both fixed here without changing the model:

    * scikit-learn >= 1.6 reads the estimator type from ``__sklearn_tags__``; skopt's class lists
      ``BaseEstimator`` before ``RegressorMixin``, so ``is_regressor`` says False and
      ``skopt.Optimizer(base_estimator="GBRT")`` raises "has to be a regressor".
    * ``predict(..., return_std=True)`` calls ``np.in1d``, removed in numpy 2.4.

    (The "GP", "RF" and "ET" surrogates of skopt 0.10.2 work as they are with numpy 2.x and
    scikit-learn 1.9; the tests of this module check that.)
    """

    _estimator_type = "regressor"

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.estimator_type = "regressor"
        return tags

    def predict(self, X: Any, return_std: bool = False, return_quantiles: bool = False) -> Any:
        if not return_std or return_quantiles:
            return super().predict(X, return_std=return_std, return_quantiles=return_quantiles)
        quantiles = list(self.quantiles)
        if not all(q in quantiles for q in (0.16, 0.5, 0.84)):
            raise ValueError(
                f"return_std needs the quantiles 0.16, 0.5 and 0.84, but got {quantiles}. "
                "Fix: keep skopt's default quantiles."
            )
        low = self.regressors_[quantiles.index(0.16)].predict(X)
        high = self.regressors_[quantiles.index(0.84)].predict(X)
        mean = self.regressors_[quantiles.index(0.5)].predict(X)
        return mean, (high - low) / 2.0


def _make_base_estimator(name: str, seed: int | None) -> Any:
    """Return what ``skopt.Optimizer(base_estimator=...)`` gets: the name, or the patched GBRT."""
    if name == "DUMMY":
        return "GP"  # never fitted: see SkOptSearch._install
    if name != "GBRT":
        return name
    from sklearn.ensemble import GradientBoostingRegressor

    # Same model as skopt.utils.cook_estimator("GBRT").
    gbrt = GradientBoostingRegressor(n_estimators=30, loss="quantile")
    return _GBRTQuantileRegressor(base_estimator=gbrt, random_state=seed)


# --------------------------------------------------------------------------------------------------
# Search space: Ray domains / skopt dimensions -> a list of _Param


@dataclass(frozen=True)
class _Param:
    """One searched parameter.

    Attributes:
        name: ``"/".join(path)``; the skopt dimension's name and the key of flat points.
        path: Where the value goes in the config (one element for a flat key such as "lr.eta0").
        dimension: The skopt dimension the optimizer searches.
        q: For quantized domains (``quniform``/``qrandint``) the dimension is an ``Integer`` over grid
            indices k, and the config value is ``k * q``. None otherwise.
        integer_values: Whether config values are ints (``randint``, ``qrandint``, skopt ``Integer``).
    """

    name: str
    path: tuple[str, ...]
    dimension: Any
    q: float | None = None
    integer_values: bool = False

    def decode(self, x: Any) -> Any:
        """Optimizer coordinate -> plain Python config value."""
        if isinstance(x, np.generic):
            x = x.item()
        if isinstance(self.dimension, SkCategorical):
            return _match_category(self.dimension.categories, x)
        if self.q is not None:
            value = int(x) * self.q
            if self.integer_values:
                return int(round(value))
            # k * q carries float noise (3 * 0.3 = 0.8999999999999999): round it at q's precision.
            return float(round(value, 12 - math.floor(math.log10(abs(self.q)))))
        return int(x) if self.integer_values else float(x)

    def encode(self, value: Any, where: str) -> Any:
        """Config value -> optimizer coordinate; ``where`` names the value in error messages."""
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(self.dimension, SkCategorical):
            categories = list(self.dimension.categories)
            if not any(_same_category(c, value) for c in categories):
                raise ConfigError(
                    f"{where} must be one of {categories}, but got {value!r}. "
                    "Fix: use one of the choices of the search space."
                )
            return _match_category(self.dimension.categories, value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, but got {value!r}.")
        x: Any = value
        if self.q is not None:
            k = value / self.q
            if not math.isclose(k, round(k), rel_tol=1e-9, abs_tol=1e-9):
                raise ConfigError(
                    f"{where} must be a multiple of q={self.q}, but got {value!r}. "
                    f"Fix: use {round(k) * self.q!r}."
                )
            x = int(round(k))
        elif isinstance(self.dimension, SkInteger):
            if float(value) != int(value):
                raise ConfigError(f"{where} must be an integer, but got {value!r}.")
            x = int(value)
        else:
            x = float(value)
        if x not in self.dimension:
            raise ConfigError(
                f"{where} must lie in the search space ({self.dimension}), but got {value!r}. "
                "Fix: move the point inside the bounds or widen the space."
            )
        return x


def _same_category(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (and False from 0)."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - exotic __eq__: treat as different
        return False


def _match_category(categories: Sequence[Any], x: Any) -> Any:
    """Return the user's own category object equal to ``x`` (skopt may hand back numpy scalars)."""
    if isinstance(x, np.generic):
        x = x.item()
    for category in categories:
        if _same_category(category, x):
            return category
    return x  # pragma: no cover - skopt only returns its own categories


def _grid_index(bound: float, q: float, round_fn: Any) -> int:
    """``bound``'s index on the grid of multiples of ``q``, rounded inwards (as Ray's Quantized does)."""
    scaled = bound / q
    nearest = round(scaled)
    if math.isclose(scaled, nearest, rel_tol=1e-9, abs_tol=1e-12):
        return int(nearest)
    return int(round_fn(scaled))


def _unsupported(name: str, what: str, fix: str) -> ConfigError:
    return ConfigError(f"Search space parameter {name!r}: {what} is not supported by SkOptSearch. Fix: {fix}")


def _convert_ray_domain(name: str, path: tuple[str, ...], domain: Any) -> _Param:
    """Convert one Ray Tune domain to a :class:`_Param` (ConfigError when skopt cannot search it)."""
    sampler = domain.get_sampler()
    q = None
    if isinstance(sampler, ray_sample.Quantized):
        q = sampler.q
        sampler = sampler.get_sampler()
    kind = f"{type(domain).__name__} domain with a {type(sampler).__name__} sampler"
    if isinstance(domain, ray_sample.Categorical):
        if isinstance(sampler, ray_sample.Grid):
            raise _unsupported(
                name,
                "tune.grid_search",
                "use tune.choice([...]) to let the searcher pick, or run the grid with Ray's default "
                "search algorithm (no search_alg).",
            )
        categories = list(domain.categories)
        if not categories:
            raise ConfigError(f"Search space parameter {name!r}: tune.choice needs at least one category.")
        bad = [c for c in categories if not (c is None or isinstance(c, (str, bool, numbers.Number)))]
        if bad:
            raise _unsupported(
                name,
                f"tune.choice over non-scalar categories {bad!r}",
                "choose among strings or numbers and map them to objects inside the trainable.",
            )
        return _Param(name, path, SkCategorical(categories, name=name))
    if isinstance(domain, ray_sample.Float):
        if isinstance(sampler, ray_sample.Uniform) and q is None:
            return _Param(name, path, SkReal(domain.lower, domain.upper, name=name))
        if isinstance(sampler, ray_sample.LogUniform) and q is None:
            return _Param(name, path, SkReal(domain.lower, domain.upper, prior="log-uniform", name=name))
        if isinstance(sampler, ray_sample.Uniform) and q is not None:
            lo = _grid_index(domain.lower, q, math.ceil)
            hi = _grid_index(domain.upper, q, math.floor)
            if hi < lo:
                raise ConfigError(
                    f"Search space parameter {name!r}: tune.quniform({domain.lower}, {domain.upper}, {q}) "
                    "contains no multiple of q. Fix: widen the bounds or use a smaller q."
                )
            return _Param(name, path, SkInteger(lo, hi, name=name), q=q)
        raise _unsupported(
            name,
            kind,
            "use tune.uniform, tune.loguniform or tune.quniform (or an skopt Real) for floats.",
        )
    if isinstance(domain, ray_sample.Integer):
        if isinstance(sampler, ray_sample.Uniform) and q is None:
            return _Param(
                name, path, SkInteger(domain.lower, domain.upper - 1, name=name), integer_values=True
            )
        if isinstance(sampler, ray_sample.LogUniform) and q is None:
            return _Param(
                name,
                path,
                SkInteger(domain.lower, domain.upper - 1, prior="log-uniform", name=name),
                integer_values=True,
            )
        if isinstance(sampler, ray_sample.Uniform) and q is not None:
            lo = _grid_index(domain.lower, q, math.ceil)
            hi = _grid_index(domain.upper, q, math.floor) - (
                1 if q == 1 else 0
            )  # Ray: upper exclusive iff q == 1
            if hi < lo:
                raise ConfigError(
                    f"Search space parameter {name!r}: tune.qrandint({domain.lower}, {domain.upper}, {q}) "
                    "contains no multiple of q. Fix: widen the bounds or use a smaller q."
                )
            return _Param(name, path, SkInteger(lo, hi, name=name), q=q, integer_values=True)
        raise _unsupported(
            name,
            kind,
            "use tune.randint, tune.lograndint or tune.qrandint (or an skopt Integer) for integers.",
        )
    raise _unsupported(
        name,
        f"{kind} (e.g. tune.sample_from, tune.randn, tune.qloguniform)",
        "use tune.uniform/loguniform/quniform/randint/lograndint/qrandint/choice or an skopt dimension.",
    )


def _convert_skopt_dimension(name: str, path: tuple[str, ...], dimension: Any) -> _Param:
    """Copy a user's skopt dimension (named after the parameter) into a :class:`_Param`."""
    dim = copy.deepcopy(dimension)
    dim.name = name
    if isinstance(dim, SkCategorical):
        return _Param(name, path, dim)
    if isinstance(dim, SkInteger):
        return _Param(name, path, dim, integer_values=True)
    if isinstance(dim, SkReal):
        return _Param(name, path, dim)
    raise _unsupported(
        name, f"the skopt dimension {dimension!r}", "use skopt.space.Real, Integer or Categorical."
    )


def _is_grid(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"grid_search"}


def _search_domain_names(config: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    """Names ("a/b") of the entries of ``config`` that are, or hide, search domains."""
    names: list[str] = []
    for key, value in config.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value and not _is_grid(value):
            names.extend(_search_domain_names(value, path))
        elif _contains_search_domain(value):
            names.append("/".join(path))
    return names


def _contains_search_domain(value: Any) -> bool:
    """Whether ``value`` (a list/tuple leaf) hides a Ray domain, a grid search or an skopt dimension."""
    if isinstance(value, ray_sample.Domain) or _is_grid(value):
        return True
    if SkDimension is not None and isinstance(value, SkDimension):
        return True
    if isinstance(value, Mapping):
        return any(_contains_search_domain(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_search_domain(v) for v in value)
    return False


def _parse_space(space: Mapping[str, Any]) -> tuple[list[_Param], list[tuple[tuple[str, ...], Any]]]:
    """Split a (possibly nested) space into searched parameters and constants.

    Returns:
        ``(params, constants)``; constants are ``(path, value)`` pairs copied into every config.
    """
    params: list[_Param] = []
    constants: list[tuple[tuple[str, ...], Any]] = []

    def visit(node: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in node.items():
            if not isinstance(key, str):
                raise ConfigError(
                    f"Search space keys must be strings, but got {key!r} at {'/'.join(prefix) or 'top level'}."
                )
            path = (*prefix, key)
            name = "/".join(path)
            if _is_grid(value):
                raise _unsupported(
                    name,
                    "tune.grid_search",
                    "use tune.choice([...]) to let the searcher pick, or run the grid with Ray's default "
                    "search algorithm (no search_alg).",
                )
            if isinstance(value, ray_sample.Domain):
                params.append(_convert_ray_domain(name, path, value))
            elif isinstance(value, SkDimension):
                params.append(_convert_skopt_dimension(name, path, value))
            elif isinstance(value, Mapping) and value:
                visit(value, path)
            elif isinstance(value, (list, tuple)) and _contains_search_domain(value):
                raise _unsupported(
                    name,
                    "a list holding search domains",
                    "give each searched element its own key in a dict.",
                )
            else:
                constants.append((path, value))

    visit(space, ())
    names = [p.name for p in params] + ["/".join(path) for path, _ in constants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"Search space names must be unique once nested keys are joined with '/', but {duplicates} "
            "appear twice. Fix: rename the flat key or the nested one."
        )
    return params, constants


def _flatten_point(point: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Nested or flat point -> ``{"a/b": value}`` (the names :class:`_Param` uses)."""
    flat: dict[str, Any] = {}
    for key, value in point.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value:
            flat.update(_flatten_point(value, path))
        else:
            flat["/".join(path)] = value
    return flat


def _set_path(config: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value




def _check_metric_mode(metric: Any, mode: Any) -> None:
    """Validate ``metric``/``mode`` before Ray's base class ``assert``s on them."""
    if metric is not None and not isinstance(metric, str):
        raise ConfigError(
            f"metric must be one metric name (a str), but got {metric!r}. "
            "SkOptSearch optimises one metric; use OptunaSearch for several."
        )
    if mode is not None and mode not in ("min", "max"):
        raise ConfigError(f"mode must be 'min' or 'max', but got {mode!r}.")


# --------------------------------------------------------------------------------------------------
# The searcher
