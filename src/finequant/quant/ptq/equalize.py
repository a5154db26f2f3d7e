"""Cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization").

For two layers in a row, ``y = W2 · act(W1 · x + b1)`` with a positively homogeneous ``act``
(ReLU, identity), scaling output channel ``i`` of layer 1 by ``1/s_i`` and input channel ``i`` of
layer 2 by ``s_i`` leaves ``y`` unchanged. Choosing ``s_i = sqrt(r1_i / r2_i)`` (``r`` = per-channel
weight range) gives both layers the same channel ranges, which is what per-tensor quantization of
depthwise-separable nets (EfficientNet-Lite, MobileNet) needs. ReLU6 is not homogeneous: the paper
and AIMET replace it with ReLU, which changed 31% of the top-1 predictions of our fine-tuned
EfficientNet-Lite0; here it becomes :class:`ChannelClip` (``clamp(x, 0, 6/s_i)`` per channel), so
the float function is unchanged exactly.
Each pair is verified on data: if scaling it changes the float output (e.g. the first layer's
output also feeds a residual add), it is undone and listed as rejected.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from finequant.models.base import forward
from finequant.quant.modules import QuantLayer
from finequant.quant.ptq.common import float_reference, quant_layers

# Modules that act per channel and commute with a positive per-channel scale (ReLU6 after rewrite).
class ChannelClip(nn.Module):
    """ReLU6 after equalization: ``min(relu(x), high[c])`` with a per-channel upper bound."""

    def __init__(self, channels: int, high: float = 6.0) -> None:
        super().__init__()
        self.register_buffer("high", torch.full((channels,), float(high)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[1 if x.dim() > 2 else -1] = -1
        return torch.minimum(torch.relu(x), self.high.reshape(shape))


PASSTHROUGH = (ChannelClip, nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
               nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten)
ITERATIONS = 4


def find_pairs(model: nn.Module, example: Any) -> list[tuple[str, list[str], str]]:
    """(layer1, activation modules between, layer2) where layer2's input is exactly act(layer1's output)."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, tuple[str, list[str]]] = {}
    pairs: list[tuple[str, list[str], str]] = []
    alive: list[torch.Tensor] = []  # tensors are keyed by id(): keep them alive so no id is reused

    def after_layer(mod: nn.Module, a: Any, out: torch.Tensor) -> None:
        produced[id(out)] = (names[mod], [])
        alive.append(out)

    def after_act(mod: nn.Module, a: Any, out: torch.Tensor) -> None:
        if id(a[0]) in produced:
            src, acts = produced[id(a[0])]
            produced[id(out)] = (src, acts + [names[mod]])
            alive.append(out)

    def before_layer(mod: nn.Module, a: Any) -> None:
        if id(a[0]) in produced:
            src, acts = produced[id(a[0])]
            pairs.append((src, acts, names[mod]))

    hooks = []
    for m in model.modules():
        if isinstance(m, QuantLayer) and not isinstance(m.layer, nn.Embedding):
            hooks += [m.register_forward_hook(after_layer), m.register_forward_pre_hook(before_layer)]
        elif isinstance(m, PASSTHROUGH):
            hooks.append(m.register_forward_hook(after_act))
    try:
        with torch.no_grad(), float_reference(model):
            forward(model, example)
    finally:
        for h in hooks:
            h.remove()
    unique = dict.fromkeys((a, tuple(acts), b) for a, acts, b in pairs)
    return [(a, list(acts), b) for a, acts, b in unique]


def _input_ranges(layer: nn.Module, channels: int) -> torch.Tensor | None:
    """Per-input-channel weight range of ``layer``, or None when its grouping does not allow scaling."""
    w = layer.weight.detach()
    groups = getattr(layer, "groups", 1)
    if groups == 1 and w.shape[1] == channels:
        return w.transpose(0, 1).reshape(channels, -1).abs().amax(1)
    if groups == channels and getattr(layer, "in_channels", -1) == channels:  # depthwise
        return w.reshape(channels, -1).abs().amax(1)
    return None


@torch.no_grad()
def _scale_pair(first: nn.Module, second: nn.Module, clips: list[ChannelClip]) -> bool:
    w1 = first.weight
    r1 = w1.detach().reshape(w1.shape[0], -1).abs().amax(1)
    r2 = _input_ranges(second, w1.shape[0])
    if r2 is None:
        return False
    s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp(min=1e-12)), torch.ones_like(r1)).clamp(1e-4, 1e4)
    w1.div_(s.reshape(-1, *([1] * (w1.dim() - 1))))
    if first.bias is not None:
        first.bias.div_(s)
    for clip in clips:
        clip.high.div_(s)
    w2 = second.weight
    if getattr(second, "groups", 1) == 1:
        w2.mul_(s.reshape(1, -1, *([1] * (w2.dim() - 2))))
    else:
        w2.mul_(s.repeat_interleave(w2.shape[0] // s.numel()).reshape(-1, *([1] * (w2.dim() - 1))))
    return True


def _outputs(model: nn.Module, batch: Any) -> torch.Tensor:
    with torch.no_grad(), float_reference(model):
        return forward(model, batch).float()


def cross_layer_equalization(model: nn.Module, batches: list[Any]) -> dict[str, Any]:
    """Equalize every verified pair of quantizable layers in place; returns what was done."""
    if not batches:
        from finequant.errors import FinequantError

        raise FinequantError("cross-layer equalization needs one batch of inputs to find and verify layer pairs")
    batch = batches[0]
    layers = quant_layers(model)
    before = _outputs(model, batch)
    candidates = [(a, acts, b) for a, acts, b in find_pairs(model, batch)
                  if not isinstance(layers[b].layer, nn.Embedding)]
    relu6: dict[str, nn.Module] = {}
    for a, acts, _ in candidates:
        for name in acts:
            if isinstance(model.get_submodule(name), nn.ReLU6):
                relu6[name] = model.get_submodule(name)
                model.set_submodule(name, ChannelClip(layers[a].layer.weight.shape[0]))
    reference = _outputs(model, batch)
    accepted: list[tuple[str, str]] = []
    rejected: list[tuple[str, str, str]] = []
    kept_acts: set[str] = set()
    clips: dict[tuple[str, str], list[ChannelClip]] = {}
    for a, acts, b in candidates:
        first, second = layers[a].layer, layers[b].layer
        clips[(a, b)] = [m for m in map(model.get_submodule, acts) if isinstance(m, ChannelClip)]
        touched = [t for t in (first.weight, first.bias, second.weight, *(c.high for c in clips[(a, b)]))
                   if t is not None]
        saved = [t.detach().clone() for t in touched]
        if not _scale_pair(first, second, clips[(a, b)]):
            rejected.append((a, b, "layer 2's weights do not map one-to-one to layer 1's channels"))
            continue
        out = _outputs(model, batch)
        if (out - reference).abs().max() > 1e-3 * reference.abs().max() + 1e-5:
            with torch.no_grad():
                for t, old in zip(touched, saved):
                    t.copy_(old)
            rejected.append((a, b, "output changed: layer 1's output has other consumers"))
            continue
        accepted.append((a, b))
        kept_acts.update(acts)
    for name in set(relu6) - kept_acts:  # no equalized pair scales through it: put ReLU6 back
        model.set_submodule(name, relu6.pop(name))
    for _ in range(ITERATIONS - 1):  # equalizing a pair moves its neighbours' ranges: iterate
        for a, b in accepted:
            _scale_pair(layers[a].layer, layers[b].layer, clips[(a, b)])
    for m in layers.values():
        m.refresh_weight_qparams()
    after = _outputs(model, batch)
    return {"pairs": len(accepted), "rejected": [list(r) for r in rejected],
            "relu6_to_channel_clip": {n: int(model.get_submodule(n).high.numel()) for n in sorted(relu6)},
            "max_output_change": float((after - before).abs().max())}
