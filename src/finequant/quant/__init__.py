"""Quantization core: schemes, observers, methods and the one-call API."""

from finequant._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "METHODS": "finequant.catalog", "OBSERVERS": "finequant.catalog", "PTQ_STEPS": "finequant.catalog",
    "QuantConfig": "finequant.quant.config", "QATConfig": "finequant.quant.config",
    "QuantSpec": "finequant.quant.spec",
    "QParams": "finequant.quant.api", "QuantizedModel": "finequant.quant.api", "calibrate": "finequant.quant.api",
    "prepare": "finequant.quant.api", "qparams_from_model": "finequant.quant.api", "quantize": "finequant.quant.api",
    "quantize_inference": "finequant.quant.api",
    "SUPPORTED_LAYERS": "finequant.quant.modules", "LayerQParams": "finequant.quant.modules",
    "QuantLayer": "finequant.quant.modules",
    "save_quantized": "finequant.quant.artifact", "load_quantized": "finequant.quant.artifact",
})
