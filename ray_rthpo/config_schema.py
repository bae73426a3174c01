"""Strict conversion between plain dicts (YAML, Ray's flat configs) and frozen dataclasses.

Unknown keys and wrong types fail with a :class:`~ray_rthpo.errors.ConfigError` that names the key's
path, the bad value and the fix. PyYAML reads ``1e-8`` (no decimal point) as a string: for a field
typed as a float such a numeric string is read as the number it spells; anything else is refused.
This module knows nothing about RT-HPO; :mod:`ray_rthpo.config` declares the schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from ray_rthpo.errors import ConfigError

T = TypeVar("T")

#: A number as PyYAML may leave it in a string (``1e-8``, ``1.0e6``).
FLOAT_STRING = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def type_name(tp: Any) -> str:
    """A short human name for a type annotation (``float``, ``list of int``, ``float or null``)."""
    optional, inner = _is_optional(tp)
    if optional:
        return f"{type_name(inner)} or null"
    origin = get_origin(tp)
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {type_name(args[0])}" if args else "list"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path} must be a {type_name(tp)}, but got null; set a value or delete the key.")
    tp = inner
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping of keys, but got {value!r}.")
        return from_dict(tp, value, path)
    origin = get_origin(tp)
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a {type_name(tp)}, but got {value!r}; write it as "
                              "[a, b, ...].")
        items = [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)] if args else list(value)
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, but got {value!r}; write true or false.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path} must be an integer, but got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and FLOAT_STRING.match(value.strip()):
            # PyYAML (YAML 1.1) reads 1e-8 and 1.0e6 as strings; for a number field they mean one number.
            return float(value)
        raise ConfigError(f"{path} must be a number, but got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} must be a string, but got {value!r}.")
    if tp is Any:
        return value
    raise TypeError(f"config_schema cannot convert type {tp!r} at {path}")  # a schema bug, not user input


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types.

    ``path`` prefixes key names in error messages (``"lr.beta"``). Missing keys keep their defaults.
    The dataclass's own ``__post_init__`` checks ranges.
    """
    if not isinstance(data, dict):
        where = path or "the configuration"
        raise ConfigError(f"{where} must be a mapping of keys, but got {data!r}.")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(fields))}."
            raise ConfigError(f"unknown key '{key_path}'; {hint}")
        kwargs[key] = _coerce(value, hints[key], key_path)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # a message that starts with one of this dataclass's own keys gets the path in front of it; one that
        # names its subject itself ('data.name ...', 'strategy b: ...') is whole as it is
        head = re.match(r"[A-Za-z_]\w*", str(err))
        if path and head is not None and head.group(0) in fields and not str(err).startswith(path):
            raise ConfigError(f"{path}.{err}") from None
        raise


def to_dict(obj: Any) -> Any:
    """The plain-dict (YAML- and JSON-ready) form of a dataclass tree; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"lr": {"beta": 1}}`` -> ``{"lr.beta": 1}``: the flat form Ray Tune passes around."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`: ``{"lr.beta": 1}`` -> ``{"lr": {"beta": 1}}``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).split(".")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"key '{key}' sets a field inside '{part}', which is not a section.")
            node = child
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (sections merge, values replace)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds (never ``assert``)."""
    if not condition:
        raise ConfigError(message)


def check_choice(name: str, value: str, choices: typing.Iterable[str]) -> None:
    """Raise a :class:`ConfigError` naming the choices (and the closest one) if ``value`` is not one."""
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, but got {value!r}.{hint}")
