"""Lazy package exports (PEP 562): ``import finequant`` and the CLI's help stay free of torch.

A package lists ``name -> module`` and each name is imported from its module on first access.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]],
                                                                   list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for a package exporting ``exports``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
