"""Empirical bias correction (Nagel et al., 2019; AIMET's "empirical" variant).

Quantizing weights and activations shifts the mean of each layer's output (rounding errors do not
average out per channel). With calibration data, compare each quantized layer's per-channel output
mean in the quantized model with the float model's, and subtract the difference from the bias.
Layers are corrected one at a time in execution order, each after its upstream layers, so that
corrections do not compound (correcting all at once over-corrects deep nets).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from finequant.errors import FinequantError
from finequant.models.base import forward
from finequant.quant.ptq.common import execution_order, float_reference, output_channel_mean, quant_layers

MAX_BATCHES = 4  # calibration batches used: the method costs one pass over them per layer


@torch.no_grad()
def _output_means(model: nn.Module, batches: list[Any], names: list[str]) -> dict[str, torch.Tensor]:
    """Per-channel output mean of each named layer over ``batches`` (one pass)."""
    layers = quant_layers(model)
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(mod: nn.Module, a: Any, y: torch.Tensor) -> None:
            sums[name] = sums.get(name, 0) + output_channel_mean(mod, y)

        return record

    handles = [layers[n].register_forward_hook(hook(n)) for n in names]
    try:
        for x in batches:
            forward(model, x)
    finally:
        for h in handles:
            h.remove()
    return {n: s / len(batches) for n, s in sums.items()}


@torch.no_grad()
def bias_correction(model: nn.Module, batches: list[Any]) -> dict[str, Any]:
    """Correct, in place and in execution order, the bias of every quantized layer that has one."""
    if not batches:
        raise FinequantError("bias correction needs calibration data (calib_data)")
    batches = batches[:MAX_BATCHES]
    layers = quant_layers(model)
    names = [n for n in execution_order(model, batches[0])
             if not layers[n].weight_spec.is_float and getattr(layers[n].layer, "bias", None) is not None
             and not isinstance(layers[n].layer, nn.Embedding)]
    with float_reference(model):
        target = _output_means(model, batches, names)
    before = _output_means(model, batches, names)
    for n in names:  # one pass per layer: each sees its upstream layers already corrected
        shift = _output_means(model, batches, [n])[n] - target[n]
        layers[n].layer.bias.sub_(shift.to(layers[n].layer.bias.dtype))
    after = _output_means(model, batches, names)

    def mean_abs(means: dict[str, torch.Tensor]) -> float:
        return sum(float((means[n] - target[n]).abs().mean()) for n in names) / max(len(names), 1)

    return {"layers": len(names), "mean_abs_shift_before": mean_abs(before), "mean_abs_shift_after": mean_abs(after)}
