"""``QuantConfig``: what to quantize and how; per-layer overrides make mixed precision."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from finequant.configs import from_mapping
from finequant.errors import ConfigError
from finequant.quant.spec import GRANULARITIES, SCHEMES

WEIGHT_OBSERVERS = ("minmax", "mse")


@dataclass
class QuantConfig:
    """Defaults give W8A8 static PTQ: int8 per-channel symmetric weights, uint8 per-tensor activations.

    ``ptq`` lists advanced PTQ steps (``cle``, ``adaround``, ``bias-correction``; see
    :mod:`finequant.quant.ptq`). ``skip`` holds regexes of layer names left in float; ``overrides`` maps a layer-name regex to
    field changes for those layers (e.g. ``{"blocks\\.0": {"weight_bits": 8}, "head": {"float": True}}``).
    """

    method: str = "static"
    weight_bits: int = 8
    act_bits: int = 8
    granularity: str = "per-channel"
    group_size: int = 128
    scheme: str = "affine"
    observer: str = "minmax"
    weight_observer: str = "minmax"
    act_symmetric: bool = False
    calib_batches: int = 16
    fold_bn: bool = True
    ptq: list[str] = field(default_factory=list)
    adaround_iterations: int = 400
    skip: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        from finequant.quant.methods import METHODS
        from finequant.quant.observers import OBSERVERS

        if self.method not in METHODS:
            raise ConfigError(f"method: {METHODS.unknown_message(self.method)}")
        if self.observer not in OBSERVERS:
            raise ConfigError(f"observer: {OBSERVERS.unknown_message(self.observer)}")
        if self.weight_observer not in WEIGHT_OBSERVERS:
            raise ConfigError(f"weight_observer={self.weight_observer!r}: allowed {', '.join(WEIGHT_OBSERVERS)}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity={self.granularity!r}: allowed {', '.join(GRANULARITIES)}")
        if self.scheme not in SCHEMES:
            raise ConfigError(f"scheme={self.scheme!r}: allowed {', '.join(SCHEMES)}")
        for key in ("weight_bits", "act_bits"):
            if not 2 <= getattr(self, key) <= 16:
                raise ConfigError(f"{key}={getattr(self, key)} must be between 2 and 16")
        from finequant.quant.ptq import PTQ_STEPS

        for step in self.ptq:
            if step not in PTQ_STEPS:
                raise ConfigError(f"ptq: {PTQ_STEPS.unknown_message(step)}")
        if self.calib_batches < 1:
            raise ConfigError(f"calib_batches={self.calib_batches} must be >= 1")
        known = {f.name for f in fields(self)} | {"float"}
        for pattern, change in self.overrides.items():
            _compile(pattern, "overrides")
            bad = set(change) - known
            if bad:
                raise ConfigError(f"overrides[{pattern!r}]: unknown key(s) {sorted(bad)}")
        for pattern in self.skip:
            _compile(pattern, "skip")

    def for_layer(self, name: str) -> QuantConfig | None:
        """The config that applies to one layer, or None when it stays in float."""
        if any(re.search(p, name) for p in self.skip):
            return None
        cfg = self
        for pattern, change in self.overrides.items():
            if re.search(pattern, name):
                if change.get("float"):
                    return None
                cfg = replace(cfg, **{k: v for k, v in change.items() if k != "float"}, overrides={})
        return cfg

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        """Build from a mapping (YAML/JSON), rejecting unknown keys by name."""
        return from_mapping(cls, d, "quantize")


def _compile(pattern: str, key: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{key}: invalid regular expression {pattern!r} ({e})") from e
