"""Mixed precision: per-layer weight bit widths that meet an accuracy budget at the least cost.

The solver is greedy on the sensitivity table (Sensitivity rows): start every layer at its
cheapest option, then, while the predicted drop (the sum of single-layer drops, the usual additive
model) exceeds the budget, upgrade the layer with the best drop reduction per unit of extra cost.
The result is a :class:`QuantConfig` with per-layer overrides that every backend executes; the
caller verifies the real drop and can tighten the budget.
"""

from __future__ import annotations

import re
from dataclasses import replace

from finequant.errors import ConfigError
from finequant.quant.config import QuantConfig
from finequant.tuning.sensitivity import Sensitivity

FLOAT = 32  # the "keep in float" option, priced at 32 bits per weight


def choose_bits(table: list[Sensitivity], max_drop: float) -> dict[str, int]:
    """Per layer, the bit width (``FLOAT`` = keep float) minimizing total weight bits subject to
    sum of predicted accuracy drops <= ``max_drop`` (drops below zero count as zero)."""
    if max_drop < 0:
        raise ConfigError(f"max_drop={max_drop} must be >= 0")
    options: dict[str, list[tuple[int, float, int]]] = {}
    for row in table:
        options.setdefault(row.layer, []).append((row.bits, max(row.accuracy_drop, 0.0), row.weight_params))
    for layer, opts in options.items():
        params = opts[0][2]
        opts.append((FLOAT, 0.0, params))
        opts.sort()
    choice = {layer: 0 for layer in options}  # index into the sorted options: cheapest first

    def total_drop() -> float:
        return sum(options[layer][i][1] for layer, i in choice.items())

    while total_drop() > max_drop + 1e-12:
        best, best_gain = None, -1.0
        for layer, i in choice.items():
            opts = options[layer]
            if i + 1 >= len(opts):
                continue
            # jump to the cheapest higher option that lowers the drop
            for j in range(i + 1, len(opts)):
                reduction = opts[i][1] - opts[j][1]
                if reduction > 0:
                    extra = (opts[j][0] - opts[i][0]) * opts[i][2]
                    gain = reduction / max(extra, 1)
                    if gain > best_gain:
                        best, best_gain = (layer, j), gain
                    break
        if best is None:
            break  # nothing left to upgrade: every layer already at its most accurate option
        choice[best[0]] = best[1]
    return {layer: options[layer][i][0] for layer, i in choice.items()}


def mixed_config(base: QuantConfig, bits: dict[str, int]) -> QuantConfig:
    """A QuantConfig whose overrides give each layer its chosen bit width (or float)."""
    overrides: dict[str, dict] = {}
    for layer, b in bits.items():
        key = "^" + re.escape(layer) + "$"
        overrides[key] = {"float": True} if b == FLOAT else {"weight_bits": b}
    return replace(base, overrides=overrides)
