"""Quantization core: schemes, observers, methods and the one-call API."""

from finequant.quant.api import QParams, QuantizedModel, calibrate, prepare, qparams_from_model, quantize, \
    quantize_inference
from finequant.quant.config import QuantConfig
from finequant.quant.methods import METHODS
from finequant.quant.modules import SUPPORTED_LAYERS, LayerQParams, QuantLayer
from finequant.quant.observers import OBSERVERS
from finequant.quant.spec import QuantSpec

__all__ = ["METHODS", "OBSERVERS", "SUPPORTED_LAYERS", "LayerQParams", "QParams", "QuantConfig", "QuantLayer",
           "QuantSpec", "QuantizedModel", "calibrate", "prepare", "qparams_from_model", "quantize",
           "quantize_inference"]
