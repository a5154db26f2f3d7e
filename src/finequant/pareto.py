"""The Pareto front: items that no other item beats on every objective (one function for tune and report)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def pareto_front(items: Sequence[Mapping[str, Any]], goals: Mapping[str, str]) -> list[int]:
    """Indices of the items not dominated by another; ``goals`` maps each key to ``"max"`` or ``"min"``.

    An item is dominated when another is at least as good on every key and better on one."""
    def at_least(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
        return all(a[k] >= b[k] if g == "max" else a[k] <= b[k] for k, g in goals.items())

    return [i for i, t in enumerate(items)
            if not any(j != i and at_least(o, t) and any(o[k] != t[k] for k in goals) for j, o in enumerate(items))]
