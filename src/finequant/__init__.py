"""finequant: fine-tune a pretrained PyTorch model, quantize it, measure the cost, ship it.

The public API in five calls: ``load_model``, ``finetune``, ``quantize`` (or
``quantize_inference(model, qparams_from_model(model))``), ``export_qdq``, ``open_runner`` + ``measure``.
"""

from finequant.data import load_data, stratified_split
from finequant.errors import FinequantError
from finequant.models import load_artifact, load_model, save_artifact
from finequant.quant import QuantConfig, qparams_from_model, quantize, quantize_inference
from finequant.train import FinetuneConfig, finetune

__version__ = "0.1.0"

__all__ = ["FinequantError", "FinetuneConfig", "QuantConfig", "finetune", "load_artifact", "load_data",
           "load_model", "qparams_from_model", "quantize", "quantize_inference", "save_artifact",
           "stratified_split"]
