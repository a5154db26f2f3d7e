"""Advanced post-training quantization steps: CLE, bias correction, AdaRound.

``QuantConfig(ptq=["cle", "adaround", "bias-correction"])`` runs them inside :func:`quantize`:
steps marked ``before_calibration`` in :data:`finequant.catalog.PTQ_STEPS` change float weights
(so activation ranges are calibrated after them); the others refine the calibrated model. Each
step is ``(model, batches, QuantConfig) -> report``; adding one is a function here and one entry
in the catalog.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from finequant.catalog import PTQ_STEPS, PTQInfo
from finequant.quant.ptq.adaround import AdaRoundConfig, adaround
from finequant.quant.ptq.bias_correction import bias_correction
from finequant.quant.ptq.equalize import cross_layer_equalization

StepFn = Callable[[nn.Module, list[Any], Any], dict[str, Any]]


def cle(model: nn.Module, batches: list[Any], cfg: Any) -> dict[str, Any]:
    return cross_layer_equalization(model, batches)


def adaround_step(model: nn.Module, batches: list[Any], cfg: Any) -> dict[str, Any]:
    return adaround(model, batches, AdaRoundConfig(cfg.adaround_iterations, seed=cfg.seed))


def bias_correction_step(model: nn.Module, batches: list[Any], cfg: Any) -> dict[str, Any]:
    return bias_correction(model, batches)


def ordered(names: list[str]) -> list[tuple[str, StepFn, PTQInfo]]:
    """The steps in their run order, each with its function and its info."""
    steps = sorted(names, key=lambda n: PTQ_STEPS.info(n).order)
    return [(n, PTQ_STEPS.get(n), PTQ_STEPS.info(n)) for n in steps]
