"""PyTorch-native int8 execution of ``dynamic`` models: finequant's codes in PyTorch's x86/fbgemm
dynamic-quantized Linear kernel (``torch.ops.quantized.linear_dynamic``).

That kernel belongs to torch.ao's quantized-tensor stack, which PyTorch has deprecated (its
quantized dtypes are slated for removal), so it is an optional execution path here, not the core:
the same models run on ONNX Runtime's integer kernels without it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from finequant.errors import FinequantError
from finequant.quant.modules import QuantLayer


class DynamicInt8Linear(nn.Module):
    """A Linear running on int8 weights (our per-channel codes) with activations quantized per batch."""

    def __init__(self, layer: QuantLayer) -> None:
        super().__init__()
        inner = layer.layer
        scale = layer.weight_scale.detach().flatten().double()
        if scale.numel() == 1:
            scale = scale.expand(inner.out_features).contiguous()
        zero = torch.zeros(inner.out_features, dtype=torch.long)
        # quantize_per_channel of our dequantized weight gives back exactly our codes
        qweight = torch.quantize_per_channel(layer.quantized_weight().detach().float(), scale, zero, 0, torch.qint8)
        bias = None if inner.bias is None else inner.bias.detach().float()
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, which the x86 kernels need to avoid int16 overflow on AVX2
        return torch.ops.quantized.linear_dynamic(x, self._packed, True)


def dynamic_int8_model(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """A copy of a ``dynamic``-quantized model where int8 Linears run on PyTorch's int8 kernel and every
    other quantized layer runs in float with its dequantized weight; returns it and each layer's fate."""
    if "x86" not in torch.backends.quantized.supported_engines and "fbgemm" not in \
            torch.backends.quantized.supported_engines:
        raise FinequantError("this PyTorch build has no x86/fbgemm quantized engine; use --backend onnxruntime")
    net = copy.deepcopy(model).eval()
    done: dict[str, str] = {}
    for name, layer in list(net.named_modules()):
        if not isinstance(layer, QuantLayer):
            continue
        spec = layer.weight_spec
        if isinstance(layer.layer, nn.Linear) and layer.act_mode == "dynamic" and spec.scheme == "affine" \
                and spec.bits <= 8 and spec.symmetric:
            net.set_submodule(name, DynamicInt8Linear(layer))
            done[name] = "int8 (torch.ops.quantized.linear_dynamic)"
        else:
            inner = layer.layer
            with torch.no_grad():
                inner.weight.copy_(layer.quantized_weight().detach())
            net.set_submodule(name, inner)
            done[name] = "float with dequantized weight"
    return net, done
