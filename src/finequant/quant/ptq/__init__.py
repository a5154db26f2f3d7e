"""Advanced post-training quantization: cross-layer equalization, bias correction, AdaRound.

``steps`` holds the functions behind :data:`finequant.catalog.PTQ_STEPS`; each algorithm is its own
module. The core (schemes, observers, QuantLayer, methods, the ``quantize`` verb) is one level up.
"""
