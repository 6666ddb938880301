"""Typed dataclass configs built from plain dicts, with errors that name the bad key.

Every config section (model, data, training, ...) is a dataclass; YAML files and checkpoints
hold plain dicts. `dataclass_from_dict` is the one place that turns one into the other, so a
misspelled key or a wrong type is reported the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid; the message says which and why."""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type (e.g. '5e-4' -> 0.0005 for a float)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        items = [_coerce(v, args[0] if args else Any, where) for v in value]
        return tuple(items) if origin is tuple else items
    scalar = _SCALARS.get(annotation)
    return scalar(value, where) if scalar is not None else value


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{where}: expected true/false, got {value!r}")


def _as_number(value: Any) -> float | None:
    """A float from a number or a numeric string (YAML 1.1 reads "5e-4" as a string), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _as_number(value) if not isinstance(value, bool) else None
    if number is not None and number.is_integer():
        return int(number)
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _as_float(value: Any, where: str) -> float:
    number = _as_number(value)
    if number is None:
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(number):  # no setting here means anything with NaN or infinity
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _as_str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{where}: expected a string, got {value!r}")


_SCALARS = {bool: _as_bool, int: _as_int, float: _as_float, str: _as_str, Any: lambda value, where: value}


def dataclass_from_dict(cls: type[T], data: dict[str, Any] | None, section: str = "") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and coercing types."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{section or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    prefix = f"{section}." if section else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{section or cls.__name__}: {exc}") from None
