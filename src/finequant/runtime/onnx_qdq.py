"""Export to ONNX: fp32, or QDQ int8 carrying finequant's own qparams.

The float graph comes from ``torch.onnx.export`` (TorchScript exporter: no onnxscript needed). For
int8 we trace the simulated model itself rather than calling ORT's ``quantize_static``, so that our
calibration, per-layer bit widths and learned weights reach the runtime unchanged and the file rounds
exactly the tensors the simulation rounds: each quantized Conv/Gemm holds its weight as an int8
initializer + DequantizeLinear (per channel) and its bias as int32 + DQ, and every activation point
(:mod:`finequant.quant.points`) is a QuantizeLinear/DequantizeLinear pair. ONNX Runtime then fuses these
into integer kernels (QLinearConv, QGemm, MatMulIntegerToFloat, QLinearAdd, QLinearMul, ...).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from finequant.errors import FinequantError
from finequant.io import atomic_write_bytes
from finequant.quant.api import QuantizedModel
from finequant.quant.modules import QuantLayer
from finequant.quant import points
from finequant.quant.points import detach
from finequant.runtime.onnx_graph import finish

log = logging.getLogger(__name__)
OPSET = 20
ACTIVATIONS = ("Relu", "Clip")
PASS_THROUGH = ("MaxPool",)  # ops whose output range is within their input's (max over a window)


def float_copy(model: nn.Module) -> nn.Module:
    """The model with every QuantLayer replaced by its float layer holding the dequantized weight, and no
    activation quantization."""
    net = copy.deepcopy(model).eval()
    detach(net)
    for name, layer in list(net.named_modules()):
        if isinstance(layer, QuantLayer):
            inner = layer.layer
            with torch.no_grad():
                inner.weight.copy_(layer.quantized_weight().detach())
            net.set_submodule(name, inner)
    return net


@contextlib.contextmanager
def static_same_padding(model: nn.Module, example: Any, pad_before_point: bool = False) -> Iterator[None]:
    """TF-style SAME padding (timm's ``Conv2dSame``) computes its pads from the input's shape at run time,
    which traces into ~200 float shape-arithmetic nodes on EfficientNet-Lite0 that every runtime evaluates
    and that ORT's ``quantize_static`` quantized (21.9% accuracy); the export's image size is fixed, so
    inside this block those layers pad by constants (the same pads, as one Pad node each).

    A quantized layer pads its quantized input (ONNX Runtime pads on uint8), or, with ``pad_before_point``,
    pads the float input and quantizes it after at the same point (Inductor: the producer writes float and one
    loop pads and quantizes, as pt2e's graph does; a uint8 pad there is a dequantize-pad-quantize loop, 2.5 of
    11.1 ms on EfficientNet-Lite0 at batch 1). Both compute the same: zero is exact on the point's grid."""
    same = {n: m for n, m in model.named_modules() if type(m).__name__ == "Conv2dSame"}
    if not same or not isinstance(example, torch.Tensor):
        yield
        return
    from timm.layers.padding import pad_same_arg

    from finequant.quant.modules import QuantLayer

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: sizes.__setitem__(n, tuple(args[0].shape[-2:])))
             for n, m in same.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    wrappers = {id(m.layer): m for m in model.modules() if isinstance(m, QuantLayer) and m.int8_kernel}
    patched = []
    for n, m in same.items():
        pads = pad_same_arg(list(sizes[n]), list(m.kernel_size), list(m.stride), list(m.dilation))
        wrapper = wrappers.get(id(m)) if pad_before_point else None
        if wrapper is not None:
            wrapper.forward = functools.partial(_pad_then_quantize, wrapper, pads)
            m.forward = functools.partial(_unpadded_conv, m)
            patched += [wrapper, m]
        else:
            m.forward = functools.partial(_padded_conv, m, pads)  # an instance attribute: removed below
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _pad_then_quantize(layer: nn.Module, pads: list[int], x: torch.Tensor) -> torch.Tensor:
    padded = F.pad(x, pads)
    points.share_point(x, padded)
    return type(layer).forward(layer, padded)


def _padded_conv(conv: nn.Conv2d, pads: list[int], x: torch.Tensor) -> torch.Tensor:
    padded = F.pad(x, pads)
    tag, watched = points.tag_of(x), points.current()
    if tag is not None and watched is not None and watched.points.mode.startswith("export"):
        # a quantized input: the padded tensor is on the same grid (zero is exact), and quantizing it again with
        # the same point lets ONNX Runtime pad on uint8 and run the convolution as QLinearConv (else: float)
        padded = watched.points.quantize(padded, tag[1])
    return _unpadded_conv(conv, padded)


def _unpadded_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def export_float(model: nn.Module, example: torch.Tensor | dict[str, torch.Tensor],
                 path: str | Path | None = None) -> onnx.ModelProto:
    """fp32 ONNX with dynamic batch (and, for text, sequence) axes; output ``logits``.

    An image batch becomes input ``input``; a text batch (keyword tensors such as ``input_ids``,
    ``attention_mask``) keeps its names.
    """
    if isinstance(example, dict):
        # Input names follow the forward signature's order, not the dict's (tokenizers put
        # token_type_ids before attention_mask; naming them in dict order would swap the two).
        names = [p for p in inspect.signature(model.forward).parameters if p in example]
        args, kwargs = (), {n: example[n] for n in names}
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
    else:
        names, args, kwargs, axes = ["input"], (example,), None, {"input": {0: "batch"}}
    buf = io.BytesIO()
    try:
        # The TorchScript exporter keeps parameter names as initializer names, which the QDQ rewrite
        # keys on, and needs no onnxscript; torch deprecates it in favour of torch.export (dynamo=True).
        # Its tracer warnings are not actionable for users; real failures raise and are reported below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with static_same_padding(model.eval(), example):
                torch.onnx.export(model, args, buf, kwargs=kwargs, dynamo=False, opset_version=OPSET,
                                  input_names=names, output_names=["logits"],
                                  dynamic_axes={**axes, "logits": {0: "batch"}})
    except Exception as e:  # the exporter raises many types for unsupported ops
        raise FinequantError(f"ONNX export failed ({type(e).__name__}: {str(e)[:300]}); the model has an "
                             "operation the ONNX exporter cannot express") from e
    proto = onnx.load_from_string(buf.getvalue())
    if path is not None:
        atomic_write_bytes(path, proto.SerializeToString())
    return proto


def export_qdq(qm: QuantizedModel, example: torch.Tensor, path: str | Path | None = None) -> tuple[
        onnx.ModelProto, dict[str, str]]:
    """QDQ int8 ONNX of a statically quantized model. Returns the proto and, per layer, how it was written.

    The file is the simulation itself, traced with its activation points in ``export`` mode: every tensor the
    simulation rounds gets a QuantizeLinear/DequantizeLinear pair, every int8 layer its codes as an int8
    initializer + DequantizeLinear, so the points in the file are the simulated ones by construction."""
    if qm.points is None:
        raise FinequantError(f"method '{qm.config.method}' quantizes no activations statically; its ONNX form is "
                             "the dynamic or fp32 exporter (see `finequant list exporters`)")
    with qm.tracing("export") as layers:
        for layer in layers.values():
            layer.exported_as = None
        proto = export_float(qm.model, example)
    finish(proto, path)
    return proto, {n: layer.exported_as or "not in the exported graph (unused by the forward pass)"
                   for n, layer in layers.items()}
