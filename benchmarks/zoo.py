"""Zoo models for the benchmarks: random init at each model's own input size, with BatchNorm statistics taken
from data, so that activations are realistic without downloading weights."""

from __future__ import annotations

import torch

from finequant.models import load_model


@torch.no_grad()
def reestimate_batchnorm(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """BatchNorm statistics of a random-init model set from data (cumulative average over ``batches``):
    with the initial (0, 1) statistics, signals vanish through deep nets (MobileNetV3's logits were 4e-8,
    which int8 rounds to exactly 0)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        model(x)
    model.eval()


def random_vision_model(spec: str, batches: int, batch_size: int = 4, seed: int = 0):
    """``(loaded, calibration batches)``: ``spec`` with random weights (the bundled ``efficientnet_lite0``: its
    ImageNet weights) at its own input size, BatchNorm statistics from the seeded random batches."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loaded = load_model(spec) if spec == "efficientnet_lite0" else load_model(spec, pretrained=False)
    s = loaded.preprocess.input_size
    calib = [torch.randn(batch_size, 3, s, s, generator=gen) for _ in range(batches)]
    if spec != "efficientnet_lite0":
        reestimate_batchnorm(loaded.model, calib)
    if isinstance(loaded.head, torch.nn.Linear) and not loaded.head.weight.any():
        torch.nn.init.normal_(loaded.head.weight, std=0.02)  # torchvision's ViT starts from a zero head: logits 0
    return loaded, calib
