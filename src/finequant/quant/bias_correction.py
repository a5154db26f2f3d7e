"""Empirical bias correction (Nagel et al., 2019; AIMET's "empirical" variant).

Quantizing weights and activations shifts the mean of each layer's output (rounding errors do not
average out per channel). With calibration data, measure each quantized layer's per-channel output
mean in the float model and in the quantized model, and subtract the difference from the bias.
Corrections cascade (a corrected layer changes its successors' inputs), so this runs a few passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from finequant.errors import FinequantError
from finequant.models.base import forward
from finequant.quant.ptq_common import float_reference, output_channel_mean, quant_layers

PASSES = 2


@torch.no_grad()
def _output_means(model: nn.Module, batches: list[Any], names: list[str]) -> dict[str, torch.Tensor]:
    layers = quant_layers(model)
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(mod: nn.Module, a: Any, y: torch.Tensor) -> None:
            m = output_channel_mean(mod, y)
            sums[name] = sums.get(name, 0) + m

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
    """Correct, in place, the bias of every quantized layer that has one; returns what changed."""
    if not batches:
        raise FinequantError("bias correction needs calibration data (calib_data)")
    layers = quant_layers(model)
    names = [n for n, m in layers.items() if not m.weight_spec.is_float and getattr(m.layer, "bias", None) is not None
             and not isinstance(m.layer, nn.Embedding)]
    with float_reference(model):
        target = _output_means(model, batches, names)
    first_error = None
    for _ in range(PASSES):
        got = _output_means(model, batches, names)
        errors = {n: got[n] - target[n] for n in names}
        if first_error is None:
            first_error = {n: float(e.abs().mean()) for n, e in errors.items()}
        for n, e in errors.items():
            layers[n].layer.bias.sub_(e.to(layers[n].layer.bias.dtype))
    after = _output_means(model, batches, names)
    final = {n: float((after[n] - target[n]).abs().mean()) for n in names}
    return {"layers": len(names),
            "mean_abs_output_mean_error_before": sum(first_error.values()) / max(len(names), 1),
            "mean_abs_output_mean_error_after": sum(final.values()) / max(len(names), 1)}
