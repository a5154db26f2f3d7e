"""``QuantConfig``: what to quantize and how; per-layer overrides make mixed precision."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from finequant.catalog import BACKENDS, METHODS, OBSERVERS, PTQ_STEPS
from finequant.configs import from_mapping
from finequant.errors import ConfigError
from finequant.quant.spec import GRANULARITIES, SCHEMES


OP_KINDS = ("add", "mul", "sigmoid", "pool", "silu", "hardswish", "concat", "matmul")
"""Kinds of activation ops that can run int8 besides Conv/Linear (see :mod:`finequant.quant.points`)."""


@dataclass(frozen=True)
class QuantConfig:
    """Defaults give W8A8 static PTQ: int8 per-channel symmetric weights, uint8 per-tensor activations.

    ``overrides`` maps a layer-name regex to field changes for those layers (e.g.
    ``{"blocks\\.0": {"weight_bits": 8}, "head": {"float": True}}``).
    """

    method: str = "static"
    """Quantization method (see `finequant list methods`)."""
    weight_bits: int = 8
    """Weight bits (2-16)."""
    act_bits: int = 8
    """Activation bits (static, dynamic and qat)."""
    granularity: str = "per-channel"
    """Weight granularity: per-tensor, per-channel or per-group."""
    group_size: int = 128
    """Inputs per group for per-group weights."""
    scheme: str | None = None
    """Weight scheme: affine, pow2 or kmeans (default: the method's own)."""
    observer: str = "minmax"
    """Activation range observer (calibrated methods)."""
    weight_observer: str = "minmax"
    """Weight range rule: minmax or mse."""
    act_symmetric: bool = False
    """Symmetric int8 activations instead of asymmetric uint8."""
    reduce_range: bool | None = None
    """7-bit weights for int8 kernels that saturate (AVX2 CPUs without VNNI); default: decided from this CPU."""
    calib_batches: int = 16
    """Calibration batches."""
    fold_bn: bool = True
    """Fold BatchNorm into the preceding convolution before quantizing."""
    runtime: str = "onnxruntime"
    """The runtime the int8 model is made for (a backend name): it decides the default ``int8_ops`` and, for
    torch-inductor, that points sit after its int8 convolutions' post-ops. A model made for one runs on the
    others too, computing what was simulated; it may be slower there."""
    int8_ops: list[str] | None = None
    """Kinds of activation ops run int8 besides Conv/Linear (static): add, mul, sigmoid, pool, silu, hardswish,
    concat, matmul (attention products); default: those that pay on ``runtime`` (all of them on ONNX Runtime;
    add, concat and matmul on OpenVINO; add, pool and concat on torch-inductor, whose int8 convolutions also run
    Hardswish, SiLU and a residual Add before quantizing their output)."""
    ptq: list[str] = field(default_factory=list)
    """Advanced PTQ steps to run (repeatable): cle, adaround, bias-correction."""
    adaround_iterations: int = 400
    """AdaRound: optimization steps per layer."""
    skip: list[str] = field(default_factory=list)
    """Regex of layer names kept in float (repeatable)."""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Layer-name regex -> field changes for those layers (mixed precision)."""
    seed: int = 0
    """Random seed (observers' samples, AdaRound)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method: {METHODS.unknown_message(self.method)}")
        info = METHODS.info(self.method)
        if self.scheme is None:
            object.__setattr__(self, "scheme", info.schemes[0])
        if self.reduce_range is None:
            from finequant.cpu import has_vnni

            # both integer exporters run u8 x s8 kernels (QLinearConv/QGemm, MatMulInteger) that saturate on AVX2
            object.__setattr__(self, "reduce_range", info.exporter in ("onnx-qdq", "onnx-dynamic") and not has_vnni())
        if self.scheme not in SCHEMES:
            raise ConfigError(f"scheme={self.scheme!r}: allowed {', '.join(SCHEMES)}")
        if self.scheme not in info.schemes:
            raise ConfigError(f"scheme={self.scheme!r} does not go with method={self.method!r}, which takes "
                              f"{', '.join(info.schemes)}; drop scheme or pick another method")
        if self.observer not in OBSERVERS:
            raise ConfigError(f"observer: {OBSERVERS.unknown_message(self.observer)}")
        if self.observer != "minmax" and not info.calibrated:
            raise ConfigError(f"observer={self.observer!r} has no effect with method={self.method!r} (it calibrates "
                              "no activation ranges); drop observer or use method 'static'")
        weight_observers = [n for n in OBSERVERS if OBSERVERS.info(n).weights]
        if self.weight_observer not in weight_observers:
            raise ConfigError(f"weight_observer={self.weight_observer!r}: allowed {', '.join(weight_observers)}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity={self.granularity!r}: allowed {', '.join(GRANULARITIES)}")
        for key in ("weight_bits", "act_bits"):
            if not 2 <= getattr(self, key) <= 16:
                raise ConfigError(f"{key}={getattr(self, key)} must be between 2 and 16")
        if self.runtime not in BACKENDS:
            raise ConfigError(f"runtime: {BACKENDS.unknown_message(self.runtime)}")
        for kind in self.int8_ops or ():
            if kind not in OP_KINDS:
                raise ConfigError(f"int8_ops: {kind!r} is not one of {', '.join(OP_KINDS)}")
        for step in self.ptq:
            if step not in PTQ_STEPS:
                raise ConfigError(f"ptq: {PTQ_STEPS.unknown_message(step)}")
        positive = {"calib_batches": self.calib_batches, "group_size": self.group_size,
                    "adaround_iterations": self.adaround_iterations}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key}={value} must be >= 1")
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be >= 0")
        known = {f.name for f in fields(self)} | {"float"}
        for pattern, change in self.overrides.items():
            _compile(pattern, "overrides")
            bad = set(change) - known
            if bad:
                raise ConfigError(f"overrides[{pattern!r}]: unknown key(s) {sorted(bad)}")
        for pattern in self.skip:
            _compile(pattern, "skip")

    @property
    def info(self) -> Any:
        """What the method needs and how it ships (:class:`finequant.catalog.MethodInfo`)."""
        return METHODS.info(self.method)

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


@dataclass(frozen=True)
class QATConfig:
    """The training schedule of quantization-aware training (method ``qat``)."""

    epochs: int = 3
    """QAT: training epochs."""
    lr: float = 1e-4
    """QAT: learning rate."""
    distill: float = 0.5
    """QAT: weight of distillation from the float model (0 = labels only)."""
    batch_size: int = 64
    """QAT: batch size."""

    def __post_init__(self) -> None:
        bad = [f"{name}={value} (--qat-{name.replace('_', '-')}) must be {rule}" for name, value, rule, ok in (
            ("epochs", self.epochs, ">= 1", self.epochs >= 1), ("lr", self.lr, "> 0", self.lr > 0),
            ("batch_size", self.batch_size, ">= 1", self.batch_size >= 1),
            ("distill", self.distill, "in [0, 1]", 0 <= self.distill <= 1)) if not ok]
        if bad:
            raise ConfigError(f"QAT setting {'; '.join(bad)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QATConfig:
        return from_mapping(cls, d, "qat")


def _compile(pattern: str, key: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{key}: invalid regular expression {pattern!r} ({e})") from e
