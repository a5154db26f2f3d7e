"""Helpers shared by the typed config dataclasses (finetune, quantize)."""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, TypeVar, Union, get_args, get_origin

from finequant.errors import ConfigError

C = TypeVar("C")


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (the subset of typing our configs use)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1])
                                               for k, v in value.items())
    return isinstance(value, origin or tp)


def from_mapping(cls: type[C], d: dict[str, Any], section: str) -> C:
    """Build a config dataclass from a mapping (YAML/JSON), rejecting unknown keys and wrong types by name."""
    if not isinstance(d, dict):
        raise ConfigError(f"{section}: expected a mapping of keys to values, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {section} key(s) {unknown}; known keys: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    for key, value in d.items():
        if not _matches(value, hints[key]):
            raise ConfigError(f"{section}.{key}={value!r}: expected {hints[key]}".replace("typing.", ""))
    return cls(**d)
