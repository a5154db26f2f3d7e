"""Advanced post-training quantization steps (registry): CLE, bias correction, AdaRound.

``QuantConfig(ptq=["cle", "adaround", "bias-correction"])`` runs them inside :func:`quantize`:
steps marked ``before_calibration`` change float weights (so activation ranges are calibrated
after them); the others refine the calibrated model. Adding a step is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from finequant.quant.adaround import AdaRoundConfig, adaround
from finequant.quant.bias_correction import bias_correction
from finequant.quant.equalize import cross_layer_equalization
from finequant.registry import Registry


@dataclass(frozen=True)
class PTQStep:
    run: Callable[[nn.Module, list[Any], Any], dict[str, Any]]  # (model, batches, QuantConfig) -> report
    before_calibration: bool
    order: int  # steps run in this order whatever order the config lists them in


PTQ_STEPS: Registry[PTQStep] = Registry("post-training quantization step")
PTQ_STEPS.register("cle", "cross-layer equalization of consecutive layers (helps per-tensor, depthwise nets)")(
    PTQStep(lambda model, batches, cfg: cross_layer_equalization(model, batches), before_calibration=True, order=0))
PTQ_STEPS.register("adaround", "learned rounding of weights, layer by layer (for 4-bit weights)")(
    PTQStep(lambda model, batches, cfg: adaround(model, batches, AdaRoundConfig(cfg.adaround_iterations,
                                                                                  seed=cfg.seed)),
            before_calibration=False, order=1))
PTQ_STEPS.register("bias-correction", "empirical correction of the output-mean shift quantization causes")(
    PTQStep(lambda model, batches, cfg: bias_correction(model, batches), before_calibration=False, order=2))


def ordered(names: list[str]) -> list[tuple[str, PTQStep]]:
    return sorted(((n, PTQ_STEPS.get(n)) for n in names), key=lambda item: item[1].order)
