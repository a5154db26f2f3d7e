"""A name -> implementation registry: adding a strategy, method or backend is one entry.

Entries carry an ``info`` object saying what the entry can do (a method needs calibration? which
exporter ships it?), so callers ask the entry instead of comparing names. An entry may be *lazy*:
registered as ``"module:attribute"`` and imported on first :meth:`Registry.get`, so that the CLI
can list names, help and capabilities without importing torch.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from finequant.errors import SpecError

T = TypeVar("T")


class _Lazy:
    def __init__(self, target: str) -> None:
        self.target = target

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    """Maps the names the CLI accepts to implementations, with helpful errors on typos."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | _Lazy] = {}
        self._help: dict[str, str] = {}
        self._info: dict[str, Any] = {}

    def register(self, name: str, help: str = "", info: Any = None) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name", help="one line", info=Capabilities(...))``."""

        def add(obj: T) -> T:
            self._add(name, obj, help or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0], info)
            return obj

        return add

    def register_lazy(self, name: str, target: str, help: str, info: Any = None) -> None:
        """Register ``module:attribute``, imported on first use (names and help stay import-free)."""
        self._add(name, _Lazy(target), help, info)

    def _add(self, name: str, obj: Any, help: str, info: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name], self._help[name], self._info[name] = obj, help, info

    def get(self, name: str) -> T:
        try:
            entry = self._entries[name]
        except KeyError:
            raise SpecError(self.unknown_message(name)) from None
        if isinstance(entry, _Lazy):
            entry = self._entries[name] = entry.load()
        return entry

    def info(self, name: str) -> Any:
        """What the entry can do (its capabilities object), without importing it."""
        if name not in self._entries:
            raise SpecError(self.unknown_message(name))
        return self._info[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(sorted(self._entries))}."

    def help(self, name: str) -> str:
        return self._help[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def choices(self) -> str:
        """``a, b, c`` for help texts."""
        return ", ".join(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
