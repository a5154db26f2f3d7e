"""AdaRound (Nagel et al., 2020): learn whether each weight rounds up or down.

Round-to-nearest is optimal per weight but not for the layer's output. AdaRound keeps each
layer's scale and learns, layer by layer on calibration data, a soft rounding offset
``h(V) in [0, 1]`` (rectified sigmoid) minimizing the output error against the float layer, with a
regularizer that anneals ``h`` to exactly 0 or 1. Inputs come from the quantized model (earlier
layers already rounded, activations quantized as at inference), targets from the float model, so
errors do not accumulate. The result is ordinary integer codes: every backend runs it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from finequant.quant.affine import grouped, sqnr_db, ungrouped
from finequant.quant.modules import QuantLayer
from finequant.quant.ptq.common import capture, execution_order, float_reference, quant_layers

ZETA, GAMMA = 1.1, -0.1  # rectified sigmoid stretch, as in the paper


@dataclass(frozen=True)
class AdaRoundConfig:
    iterations: int = 400
    lr: float = 1e-2
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2  # fraction of iterations without the rounding regularizer
    max_batches: int = 4  # calibration batches kept per layer (memory: inputs are cached)
    seed: int = 0


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def _round_layer(layer: QuantLayer, inputs: list[torch.Tensor], targets: list[torch.Tensor],
                 cfg: AdaRoundConfig) -> tuple[float, float]:
    """Learn the rounding of one layer in place; returns output SQNR (dB) for nearest and learned."""
    spec, w = layer.weight_spec, layer.layer.weight.detach()
    scale, zp = layer.weight_scale.detach(), layer.weight_zero_point
    g = grouped(w, spec) / scale
    floor = torch.floor(g)
    rest = (g - floor).clamp(1e-4, 1 - 1e-4)
    v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))  # h(v) == rest at the start
    opt = torch.optim.Adam([v], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)

    def weight(codes: torch.Tensor) -> torch.Tensor:
        return ungrouped((torch.clamp(codes + zp, spec.qmin, spec.qmax) - zp) * scale, w, spec).to(w.dtype)

    def sqnr(codes: torch.Tensor) -> float:
        with torch.no_grad():
            return sqnr_db(torch.cat([t.flatten() for t in targets]),
                           torch.cat([layer.run_weight(x, weight(codes)).flatten() for x in inputs]))

    nearest = sqnr(torch.round(g))
    warm = int(cfg.warmup * cfg.iterations)
    for it in range(cfg.iterations):
        k = int(torch.randint(len(inputs), (1,), generator=gen))
        loss = nn.functional.mse_loss(layer.run_weight(inputs[k], weight(floor + _h(v))), targets[k])
        if it >= warm:
            beta = cfg.beta_start + (cfg.beta_end - cfg.beta_start) * (it - warm) / max(cfg.iterations - warm, 1)
            loss = loss + cfg.reg_weight * (1 - (2 * _h(v) - 1).abs().pow(beta)).sum() / v.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned = floor + (_h(v.detach()) >= 0.5).float()
    result = sqnr(learned)
    if result < nearest:  # never worse than round-to-nearest on the calibration data
        learned, result = torch.round(g), nearest
    layer.fixed_codes = ungrouped(torch.clamp(learned + zp, spec.qmin, spec.qmax), w, spec).to(torch.int32)
    layer._dequantized = None
    return nearest, result


def adaround(model: nn.Module, batches: list[Any], cfg: AdaRoundConfig | None = None) -> dict[str, Any]:
    """AdaRound every affine-quantized layer in execution order; returns per-layer SQNR gains."""
    from finequant.errors import FinequantError

    cfg = cfg or AdaRoundConfig()
    if not batches:
        raise FinequantError("AdaRound needs calibration data (calib_data)")
    batches = batches[:cfg.max_batches]
    layers = quant_layers(model)
    done: dict[str, list[float]] = {}
    for name in execution_order(model, batches[0]):
        layer = layers[name]
        if layer.weight_spec.scheme != "affine" or isinstance(layer.layer, nn.Embedding) or layer.qat:
            continue
        inputs = capture(model, layer, batches, lambda m, x, y: m.quantize_input(x).detach())
        with float_reference(model):
            targets = capture(model, layer, batches, lambda m, x, y: y.detach())
        with torch.enable_grad():
            done[name] = list(_round_layer(layer, inputs, targets, cfg))
    gains = [after - before for before, after in done.values()]
    return {"layers": len(done), "mean_sqnr_gain_db": sum(gains) / max(len(gains), 1),
            "per_layer_sqnr_db": {n: [round(b, 2), round(a, 2)] for n, (b, a) in done.items()}}

