"""Search spaces written in YAML, checked against the run config (``ray_rthpo.tune.searchers.to_domain``
turns each entry into a Ray Tune domain).

One entry per searched run-config key (flat, dotted, as Ray passes it to the trainable)::

    space:
      lr.eta0: {loguniform: [1.0e-3, 1.0]}     # tune.loguniform(low, high)
      lr.beta: {loguniform: [1.0e-9, 1.0e-1]}  # beta spans ~8 decades between methods: search it in log
      lr.gamma: {uniform: [0.5, 1.0]}          # tune.uniform(low, high)
      train.seed: {randint: [0, 100]}          # tune.randint(low, high), high excluded
      lr.mu: {choice: [0.0, 0.5, 1.0]}         # tune.choice(values)
      lr.eta0: {grid: [0.01, 0.1, 1.0]}        # tune.grid_search(values): every value is run

:func:`check_space` checks every key against the run config and every bound against the key's own
range (by building the run config at both ends), so a bad space fails before Ray starts, with the
key, the value and the fix.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from ray_rthpo.config import Config, config_from_dict
from ray_rthpo.config_schema import FLOAT_STRING, check, merge, unflatten
from ray_rthpo.errors import ConfigError

#: Spec kind -> what its list holds.
KINDS = {
    "loguniform": "[low, high] with 0 < low < high",
    "uniform": "[low, high] with low < high",
    "randint": "[low, high] integers with low < high (high excluded)",
    "choice": "[value, ...] (at least one)",
    "grid": "[value, ...] (at least one; every value is run)",
}
#: The kind that enumerates (every value is run) rather than samples.
GRID_KIND = "grid"


def _number(key: str, kind: str, value: Any) -> float:
    if isinstance(value, str) and FLOAT_STRING.match(value.strip()):
        value = float(value)  # PyYAML reads 1e-8 as a string; as a bound it means the number
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"space.{key}: {kind} bounds must be numbers, but got {value!r}.")
    if not math.isfinite(float(value)):
        raise ConfigError(f"space.{key}: {kind} bounds must be finite, but got {value!r}.")
    return float(value)


def spec_kind(key: str, spec: Any) -> tuple[str, list[Any]]:
    """Return ``(kind, values)`` of one YAML spec such as ``{loguniform: [1.0e-4, 1.0]}``, checked."""
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(f"space.{key} must be a mapping with one of {', '.join(KINDS)}, e.g. "
                          f"{{loguniform: [1.0e-4, 1.0]}}, but got {spec!r}.")
    kind, values = next(iter(spec.items()))
    if kind not in KINDS:
        raise ConfigError(f"space.{key}: unknown kind {kind!r}; use one of {', '.join(KINDS)}.")
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"space.{key}: {kind} needs {KINDS[kind]}, but got {values!r}.")
    values = list(values)
    if kind in ("loguniform", "uniform", "randint"):
        if len(values) != 2:
            raise ConfigError(f"space.{key}: {kind} needs {KINDS[kind]}, but got {values!r}.")
        low, high = (_number(key, kind, v) for v in values)
        check(low < high, f"space.{key}: {kind} needs low < high, but got {values!r}; swap or widen "
                          "the bounds.")
        if kind == "loguniform":
            check(low > 0, f"space.{key}: loguniform needs low > 0, but got {values!r}; use a small positive "
                           "low such as 1.0e-9.")
        if kind == "randint":
            check(low.is_integer() and high.is_integer(),
                  f"space.{key}: randint bounds must be integers, but got {values!r}.")
            values = [int(low), int(high)]
        else:
            values = [low, high]
    return kind, values


def _end_points(kind: str, values: list[Any]) -> list[Any]:
    """Values that must all give a valid run config: both bounds, or every listed value."""
    if kind == "randint":
        return [values[0], values[1] - 1]
    return list(values)


def check_space(space: Mapping[str, Any], base: Config,
                where: str = "space") -> dict[str, tuple[str, list[Any]]]:
    """Check a YAML space against the run config ``base``; return ``{key: (kind, values)}``.

    Every key must be a run-config key (``lr.eta0``), and the run config must be valid at each bound
    and each listed value (e.g. ``lr.eta0`` not above ``lr.eta_max``).
    """
    if not isinstance(space, Mapping):
        raise ConfigError(f"{where} must be a mapping of run-config key -> spec, but got {space!r}.")
    known = base.to_flat()
    parsed: dict[str, tuple[str, list[Any]]] = {}
    for key, spec in space.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "use a dotted run-config key such as lr.eta0."
            raise ConfigError(f"{where}: unknown key '{key}'; {hint}")
        kind, values = spec_kind(str(key), spec)
        for value in _end_points(kind, values):
            try:
                config_from_dict(merge(base.to_dict(), unflatten({key: value})))
            except ConfigError as err:
                raise ConfigError(f"{where}.{key}: the value {value!r} of {kind} {values!r} gives an invalid "
                                  f"run config ({err}); narrow the range.") from None
        parsed[str(key)] = (kind, values)
    return parsed


__all__ = ["KINDS", "GRID_KIND", "spec_kind", "check_space"]
