"""Fine-tuning strategies: each turns a model and a config into phases of trainable parameter sets.

A phase is a number of epochs with a set of trainable parameter names and an LR scale. Adding a
strategy is one function here and one entry in :mod:`finequant.catalog`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from finequant.errors import ConfigError
from finequant.models.base import LoadedModel
from finequant.catalog import STRATEGIES  # noqa: F401  (the registry of these functions)


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    trainable: frozenset[str]
    lr_scale: float = 1.0


PlanFn = Callable[[LoadedModel, "FinetuneConfig"], list[Phase]]  # noqa: F821


def head_names(loaded: LoadedModel) -> frozenset[str]:
    """Parameter names under the head modules (also when a quantization wrapper holds them)."""
    prefixes = tuple(h + "." for h in loaded.head_names)
    return frozenset(n for n, _ in loaded.model.named_parameters() if n.startswith(prefixes))


def block_groups(model: nn.Module, head: frozenset[str]) -> list[list[str]]:
    """Body parameters grouped into blocks, input side first.

    A block is the module path up to its first numeric component (``blocks.3``,
    ``encoder.layer.4``, ``layer1.0``) or else the top-level module (``conv_stem``, ``bn1``).
    """
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        if name in head:
            continue
        parts = name.split(".")[:-1] or [name]
        cut = next((i + 1 for i, p in enumerate(parts) if p.isdigit()), 1)
        groups.setdefault(".".join(parts[:cut]), []).append(name)
    return list(groups.values())


def _all(loaded: LoadedModel) -> frozenset[str]:
    return frozenset(n for n, _ in loaded.model.named_parameters())


def full(loaded: LoadedModel, cfg) -> list[Phase]:
    return [Phase("full", cfg.epochs, _all(loaded))]


def last_layer(loaded: LoadedModel, cfg) -> list[Phase]:
    return [Phase("head", cfg.epochs, head_names(loaded))]


def partial(loaded: LoadedModel, cfg) -> list[Phase]:
    groups = block_groups(loaded.model, head_names(loaded))
    if cfg.freeze_blocks > len(groups):
        raise ConfigError(f"freeze_blocks={cfg.freeze_blocks} but {loaded.spec} has {len(groups)} blocks")
    if not cfg.freeze_blocks and not cfg.freeze_patterns:
        raise ConfigError("strategy 'partial' needs freeze_blocks > 0 or freeze_patterns")
    frozen = {n for g in groups[:cfg.freeze_blocks] for n in g}
    try:
        patterns = [re.compile(p) for p in cfg.freeze_patterns]
    except re.error as e:
        raise ConfigError(f"freeze_patterns: invalid regular expression ({e})") from e
    frozen |= {n for n in _all(loaded) if any(p.search(n) for p in patterns)}
    return [Phase("partial", cfg.epochs, _all(loaded) - frozen)]


def gradual(loaded: LoadedModel, cfg) -> list[Phase]:
    head = head_names(loaded)
    groups = block_groups(loaded.model, head)
    if cfg.epochs < 2:
        return [Phase("head", 1, head)]
    per_epoch = math.ceil(len(groups) / (cfg.epochs - 1))
    phases, trainable = [Phase("head", 1, head)], set(head)
    for e in range(1, cfg.epochs):
        for g in groups[max(0, len(groups) - e * per_epoch): len(groups) - (e - 1) * per_epoch]:
            trainable |= set(g)
        phases.append(Phase(f"unfreeze-{e}", 1, frozenset(trainable)))
    return phases


def lp_ft(loaded: LoadedModel, cfg) -> list[Phase]:
    if cfg.epochs < 2:
        return [Phase("head", cfg.epochs, head_names(loaded))]
    lp = cfg.lp_epochs or max(1, cfg.epochs // 2)
    return [Phase("head", lp, head_names(loaded)),
            Phase("full", cfg.epochs - lp, _all(loaded), lr_scale=cfg.ft_lr_scale)]
