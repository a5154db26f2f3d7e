"""Tuning: per-layer sensitivity, mixed precision and the accuracy-aware search (:func:`tune`)."""

from finequant._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "TuneConfig": "finequant.tuning.config", "TuneResult": "finequant.tuning.api", "tune": "finequant.tuning.api",
    "FLOAT": "finequant.tuning.mixed", "choose_bits": "finequant.tuning.mixed", "mixed_config": "finequant.tuning.mixed",
    "Sensitivity": "finequant.tuning.sensitivity", "layer_sensitivity": "finequant.tuning.sensitivity",
    "leave_one_out": "finequant.tuning.sensitivity", "quantizable_layers": "finequant.tuning.sensitivity",
})
