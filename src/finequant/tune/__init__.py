"""Tuning: per-layer sensitivity and mixed precision within an accuracy budget."""

from finequant.tune.mixed import FLOAT, choose_bits, mixed_config
from finequant.tune.sensitivity import Sensitivity, layer_sensitivity, leave_one_out, quantizable_layers

__all__ = ["FLOAT", "Sensitivity", "choose_bits", "layer_sensitivity", "leave_one_out", "mixed_config",
           "quantizable_layers"]
