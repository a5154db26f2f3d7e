"""Helpers the advanced PTQ algorithms share: float reference runs and per-layer captures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from finequant.models.base import forward
from finequant.quant.modules import QuantLayer


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


@contextmanager
def float_reference(model: nn.Module) -> Iterator[None]:
    """Run every QuantLayer in float (weights and inputs unquantized) inside the block."""
    from finequant.quant.points import points_of

    layers = list(quant_layers(model).values())
    before = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    points = points_of(model)
    try:
        with points.mode_as("float") if points is not None else contextlib.nullcontext():
            yield
    finally:
        for m, state in zip(layers, before):
            m.enabled = state


@torch.no_grad()
def execution_order(model: nn.Module, example: Any) -> list[str]:
    """QuantLayer names in the order a forward pass runs them."""
    names = {m: n for n, m in quant_layers(model).items()}
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: order.append(names[mod])) for m in names]
    try:
        with float_reference(model):
            forward(model, example)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))


@torch.no_grad()
def capture(model: nn.Module, layer: QuantLayer, batches: list[Any],
            fn: Callable[[QuantLayer, torch.Tensor, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """``fn(layer, input, output)`` for each batch, computed inside ``layer``'s forward hook and
    copied at once (an in-place op downstream, e.g. timm's ``ReLU6(inplace=True)``, would change it)."""
    out: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda mod, a, y: out.append(fn(mod, a[0], y).detach().clone()))
    try:
        for x in batches:
            forward(model, x)
    finally:
        handle.remove()
    return out


def output_channel_mean(layer: QuantLayer, y: torch.Tensor) -> torch.Tensor:
    """Per-output-channel mean of a layer's output (channels: dim 1 for convolutions, last otherwise)."""
    axis = 1 if isinstance(layer.layer, (nn.Conv1d, nn.Conv2d)) else y.dim() - 1
    return y.float().mean(dim=[d for d in range(y.dim()) if d != axis])
