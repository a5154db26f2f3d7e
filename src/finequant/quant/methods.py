"""Quantization methods: each decides, per layer, the weight scheme and how inputs are quantized.

A method returns a :class:`LayerPlan`, or a string saying why the layer stays in float. Adding a
method is one function and one ``METHODS.register`` entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from finequant.quant.config import QuantConfig
from finequant.quant.modules import ActMode
from finequant.quant.spec import QuantSpec
from finequant.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerPlan:
    weight_spec: QuantSpec
    act_mode: ActMode = "float"
    act_spec: QuantSpec | None = None


MethodFn = Callable[[nn.Module, QuantConfig], "LayerPlan | str"]
METHODS: Registry[MethodFn] = Registry("quantization method")


def weight_spec(layer: nn.Module, cfg: QuantConfig, scheme: str | None = None) -> QuantSpec:
    """Signed symmetric weights, per output channel (axis 0) or per group of inputs."""
    granularity = cfg.granularity
    if granularity == "per-group" and layer.weight[0].numel() % cfg.group_size:
        log.info("%s: %d inputs per channel do not divide by group_size=%d; using per-channel",
                 type(layer).__name__, layer.weight[0].numel(), cfg.group_size)
        granularity = "per-channel"
    return QuantSpec(scheme=scheme or cfg.scheme, bits=cfg.weight_bits, symmetric=True, signed=True,
                     granularity=granularity, axis=0, group_size=cfg.group_size)


def act_spec(cfg: QuantConfig) -> QuantSpec:
    """Per-tensor activations; asymmetric uint8 by default (u8 activations x s8 weights is the fast
    int8 kernel on AVX2 CPUs in ONNX Runtime)."""
    return QuantSpec(bits=cfg.act_bits, symmetric=cfg.act_symmetric, signed=cfg.act_symmetric,
                     granularity="per-tensor")


@METHODS.register("static", "W8A8: calibrated activation ranges, per-channel int8 weights")
def static(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
    if isinstance(layer, nn.Embedding):
        return LayerPlan(weight_spec(layer, cfg))
    return LayerPlan(weight_spec(layer, cfg), "static", act_spec(cfg))


@METHODS.register("qat", "quantization-aware training: static W/A fake quant trained with STE")
def qat(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
    return static(layer, cfg)


@METHODS.register("dynamic", "int8 weights, activation ranges measured per batch at run time (Linear)")
def dynamic(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
    if isinstance(layer, nn.Embedding):
        return LayerPlan(weight_spec(layer, cfg))
    if isinstance(layer, nn.Linear):
        return LayerPlan(weight_spec(layer, cfg), "dynamic", act_spec(cfg))
    return "dynamic quantization covers Linear and Embedding layers; use 'static' for convolutions"


@METHODS.register("weight-only", "quantized weights (int8, or int4 per-group), float activations")
def weight_only(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
    return LayerPlan(weight_spec(layer, cfg))


def _cast(dtype: str) -> MethodFn:
    def plan(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
        spec = QuantSpec(scheme=dtype, bits=16)
        return LayerPlan(spec) if isinstance(layer, nn.Embedding) else LayerPlan(spec, "cast")

    plan.__doc__ = f"{dtype} weights and activations"
    return plan


METHODS.register("fp16", "half-precision weights and activations")(_cast("fp16"))
METHODS.register("bf16", "bfloat16 weights and activations")(_cast("bf16"))


@METHODS.register("nonlinear", "power-of-two (log) or k-means codebook weights, float activations")
def nonlinear(layer: nn.Module, cfg: QuantConfig) -> LayerPlan | str:
    scheme = cfg.scheme if cfg.scheme in ("pow2", "kmeans") else "pow2"
    granularity = "per-tensor" if cfg.granularity == "per-tensor" else "per-channel"
    return LayerPlan(QuantSpec(scheme=scheme, bits=cfg.weight_bits, granularity=granularity))
