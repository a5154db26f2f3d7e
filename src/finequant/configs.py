"""Helpers shared by the typed config dataclasses (finetune, quantize)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from finequant.errors import ConfigError

C = TypeVar("C")


def from_mapping(cls: type[C], d: dict[str, Any], section: str) -> C:
    """Build a config dataclass from a mapping (YAML/JSON), rejecting unknown keys by name."""
    if not isinstance(d, dict):
        raise ConfigError(f"{section}: expected a mapping of keys to values, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {section} key(s) {unknown}; known keys: {', '.join(sorted(known))}")
    return cls(**d)
