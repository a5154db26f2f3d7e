"""Per-layer sensitivity: how much quantizing one layer alone (at a given bit width) costs.

For each quantizable layer and candidate weight bit width, quantize only that layer (everything
else float) and measure the logit SQNR against the float model and the accuracy change on a
validation set. The table drives mixed precision (:mod:`finequant.tuning.mixed`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from finequant.models.base import forward
from finequant.quant.affine import sqnr_db
from finequant.quant.api import calibrate, prepare
from finequant.quant.config import QuantConfig
from finequant.quant.modules import SUPPORTED_LAYERS


@dataclass(frozen=True)
class Sensitivity:
    layer: str
    bits: int
    sqnr_db: float
    accuracy: float
    accuracy_drop: float
    weight_params: int


def quantizable_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, SUPPORTED_LAYERS) and n]


@torch.no_grad()
def layer_sensitivity(model: nn.Module, base: QuantConfig, calib: list[Any], val: list[tuple[Any, torch.Tensor]],
                      bits: tuple[int, ...] = (4, 8), layers: list[str] | None = None) -> list[Sensitivity]:
    """One row per (layer, bits): quantize that layer alone with ``base`` at ``bits`` weight bits."""
    model.eval()
    ref = [forward(model, x) for x, _ in val]
    labels = torch.cat([y for _, y in val])
    float_acc = float((torch.cat(ref).argmax(1) == labels).float().mean())
    rows = []
    for name in layers or quantizable_layers(model):
        size = model.get_submodule(name).weight.numel()
        others = "^(?!" + re.escape(name) + "$)"  # skip every layer but this one
        for b in bits:
            cfg = replace(base, weight_bits=b, skip=[others], overrides={})
            qm = prepare(model, cfg, calib[0] if calib else None)
            calibrate(qm, calib)
            out = [forward(qm.model, x) for x, _ in val]
            acc = float((torch.cat(out).argmax(1) == labels).float().mean())
            rows.append(Sensitivity(name, b, sqnr_db(torch.cat(ref), torch.cat(out)), acc, float_acc - acc, size))
    return rows


@torch.no_grad()
def leave_one_out(model: nn.Module, base: QuantConfig, calib: list[Any], val: list[tuple[Any, torch.Tensor]],
                  bits: tuple[int, ...] = (8,), layers: list[str] | None = None) -> list[dict[str, Any]]:
    """Per layer and weight bit width: validation accuracy with every layer quantized but that one
    (kept float), and the points it recovers over quantizing all layers; catches layers that only
    hurt in combination."""
    labels = torch.cat([y for _, y in val])

    def accuracy(cfg: QuantConfig) -> float:
        qm = prepare(model, cfg, calib[0] if calib else None)
        calibrate(qm, calib)
        return float((torch.cat([forward(qm.model, x) for x, _ in val]).argmax(1) == labels).float().mean())

    rows = []
    for b in bits:
        at_b = replace(base, weight_bits=b, overrides={})
        all_quantized = accuracy(at_b)
        for name in layers or quantizable_layers(model):
            acc = accuracy(replace(at_b, skip=["^" + re.escape(name) + "$"]))
            rows.append({"layer": name, "bits": b, "accuracy_all_but_this": acc,
                         "recovered_pt": 100 * (acc - all_quantized)})
    return rows
