"""How closely a runtime's outputs follow the simulated quantized model: the measure behind "what ships is
what was measured", shared by ``export`` (checked once when the file is written) and ``evaluate``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from finequant.models.base import forward
from finequant.quant.ptq.common import float_reference

SIMULATION_SHARE = 0.1
"""The simulation must explain what int8 changes: error(sim, runtime) <= 0.1 x error(float, runtime), or be
within twice the simulation's own rounding-flip noise (below)."""
FLIP_PERTURBATION = 1e-6
FLIP_DRAWS = 3  # the noise is the largest of this many seeded perturbations: one draw can miss most flips


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-30))


def rel_error(got: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(got - reference) / max(float(np.linalg.norm(reference)), 1e-30))


@torch.no_grad()
def simulation_agreement(model: torch.nn.Module, x: Any, got: np.ndarray) -> dict[str, float]:
    """The runtime's logits ``got`` against the simulated model's and the float model's on ``x``.

    ``explained`` is the share of the runtime's departure from float that the simulation reproduces
    (1 - error(sim) / error(float)); the float run switches the model's quantized layers off (for a model
    read from a quantized folder its weights are the dequantized ones). ``flip_noise`` is how far the
    simulation moves (largest of three seeded draws) when its input (image) or first embedding (text) changes
    by 1e-6 relative: two exact implementations of the same int8 arithmetic that sum in another order differ
    by that much (a rounding flip in one layer changes the next one's input by a whole step; untrained deep
    models amplify it)."""
    model.eval()
    sim = forward(model, x).float().numpy()
    with float_reference(model):
        flt = forward(model, x).float().numpy()
    noise = max(rel_error(_nudged(model, x, seed), sim) for seed in range(FLIP_DRAWS))
    sim_error, int8_error = rel_error(got, sim), rel_error(got, flt)
    return {"cosine": cosine(got, sim), "sim_rel_error": sim_error, "int8_rel_error": int8_error,
            "explained": 1.0 - sim_error / int8_error if int8_error > 0 else 1.0, "flip_noise": noise}


def _nudged(model: torch.nn.Module, x: Any, seed: int) -> np.ndarray:
    """The model's logits with its input (an image batch) or, for token inputs, its first embedding's output
    changed by ``FLIP_PERTURBATION`` relative."""
    gen = torch.Generator().manual_seed(seed)

    def nudge(t: torch.Tensor) -> torch.Tensor:
        return t * (1 + FLIP_PERTURBATION * torch.randn(t.shape, generator=gen))

    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return forward(model, nudge(x)).float().numpy()
    embedding = next((m for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
    if embedding is None:
        return forward(model, x).float().numpy()
    handle = embedding.register_forward_hook(lambda m, a, out: nudge(out))
    try:
        return forward(model, x).float().numpy()
    finally:
        handle.remove()


def simulation_explains(agreement: dict[str, float]) -> bool:
    """The contract: the runtime departs from the simulation by at most a tenth of what int8 changes, or by
    no more than twice the simulation's own rounding-flip noise."""
    return agreement["sim_rel_error"] <= max(SIMULATION_SHARE * agreement["int8_rel_error"],
                                             2 * agreement["flip_noise"])
