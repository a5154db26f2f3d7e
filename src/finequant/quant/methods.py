"""Quantization methods: each decides, per layer, the weight scheme and how inputs are quantized.

A method returns a :class:`LayerPlan`, or a string saying why the layer stays in float. Adding a
method is one function here and one entry in :mod:`finequant.catalog`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from finequant.quant.config import QuantConfig
from finequant.quant.modules import ActMode
from finequant.quant.spec import QuantSpec
from finequant.catalog import METHODS  # noqa: F401  (the registry of these functions)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerPlan:
    weight_spec: QuantSpec
    act_mode: ActMode = "float"
    act_spec: QuantSpec | None = None


MethodFn = Callable[[nn.Module, QuantConfig], "LayerPlan | str"]


def weight_spec(layer: nn.Module, cfg: QuantConfig) -> QuantSpec:
    """Signed symmetric weights, per output channel (axis 0) or per group of inputs."""
    granularity = cfg.granularity
    if granularity == "per-group" and layer.weight[0].numel() % cfg.group_size:
        log.info("%s: %d inputs per channel do not divide by group_size=%d; using per-channel",
                 type(layer).__name__, layer.weight[0].numel(), cfg.group_size)
        granularity = "per-channel"
    bits = 7 if cfg.reduce_range and cfg.weight_bits == 8 else cfg.weight_bits  # see finequant.cpu
    return QuantSpec(scheme=cfg.scheme, bits=bits, symmetric=True, signed=True,
                     granularity=granularity, axis=0, group_size=cfg.group_size)


def act_spec(cfg: QuantConfig) -> QuantSpec:
    """Per-tensor activations; asymmetric uint8 by default (u8 activations x s8 weights is the fast
    int8 kernel on AVX2 CPUs in ONNX Runtime)."""
    return QuantSpec(bits=cfg.act_bits, symmetric=cfg.act_symmetric, signed=cfg.act_symmetric,
                     granularity="per-tensor")


def static(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
    if isinstance(layer, nn.Embedding):
        return LayerPlan(weight_spec(layer, cfg))
    return LayerPlan(weight_spec(layer, cfg), "static", act_spec(cfg))


def qat(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
    return static(layer, cfg)


def dynamic(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
    if isinstance(layer, nn.Embedding):
        return LayerPlan(weight_spec(layer, cfg))
    if isinstance(layer, nn.Linear):
        return LayerPlan(weight_spec(layer, cfg), "dynamic", act_spec(cfg))
    return "dynamic quantization covers Linear and Embedding layers; use 'static' for convolutions"


def weight_only(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
    return LayerPlan(weight_spec(layer, cfg))


def _cast(dtype: str) -> MethodFn:
    def plan(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
        spec = QuantSpec(scheme=dtype, bits=16)
        return LayerPlan(spec) if isinstance(layer, nn.Embedding) else LayerPlan(spec, "cast")

    plan.__doc__ = f"{dtype} weights and activations"
    return plan


fp16 = _cast("fp16")
bf16 = _cast("bf16")


def nonlinear(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
    granularity = "per-tensor" if cfg.granularity == "per-tensor" else "per-channel"
    return LayerPlan(QuantSpec(scheme=cfg.scheme, bits=cfg.weight_bits, granularity=granularity))
