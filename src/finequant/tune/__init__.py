"""Tuning: per-layer sensitivity and mixed precision within an accuracy budget."""

from finequant.tune.mixed import FLOAT, choose_bits, mixed_config
from finequant.tune.sensitivity import Sensitivity, layer_sensitivity, quantizable_layers

__all__ = ["FLOAT", "Sensitivity", "choose_bits", "layer_sensitivity", "mixed_config", "quantizable_layers"]
