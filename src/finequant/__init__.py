"""finequant: fine-tune a pretrained PyTorch model, quantize it, measure the cost, ship it.

The public API, one call per step: ``load_model``/``load_data``, ``finetune``, ``quantize`` (or
``quantize_inference(model, qparams_from_model(model, calib_data))``), ``tune``, ``export``,
``evaluate``, ``bench``, ``report``; ``Run`` reads a run folder. Names are imported on first use,
so ``import finequant`` (and the CLI's help) stays fast.
"""

from finequant._lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "FinequantError": "finequant.errors",
    "load_data": "finequant.data", "stratified_split": "finequant.data",
    "load_model": "finequant.models", "load_artifact": "finequant.models", "save_artifact": "finequant.models",
    "FinetuneConfig": "finequant.train.config", "finetune": "finequant.train.loop",
    "QuantConfig": "finequant.quant.config", "QATConfig": "finequant.quant.config",
    "quantize": "finequant.quant.api", "qparams_from_model": "finequant.quant.api",
    "quantize_inference": "finequant.quant.api",
    "TuneConfig": "finequant.tuning.config", "TuneResult": "finequant.tuning.api", "tune": "finequant.tuning.api",
    "export": "finequant.runtime.exporters", "open_runner": "finequant.runtime.backends",
    "evaluate": "finequant.runtime.evaluate", "bench": "finequant.runtime.evaluate",
    "report": "finequant.reporting", "Run": "finequant.run",
})
