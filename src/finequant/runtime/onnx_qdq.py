"""Export to ONNX: fp32, or QDQ int8 carrying finequant's own qparams.

The float graph comes from ``torch.onnx.export`` (TorchScript exporter: no onnxscript needed). For
int8 we rewrite it ourselves rather than calling ORT's ``quantize_static``, so that our calibration,
per-layer bit widths and learned weights reach the runtime unchanged: each quantized Conv/Gemm gets
its weight as an int8 initializer + DequantizeLinear (per channel), its bias as int32 + DQ, and
QuantizeLinear/DequantizeLinear pairs on its input and, where no quantized layer follows, its output.
ONNX Runtime then fuses these into integer kernels (QLinearConv, QLinearMatMul, ...).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import inspect
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from finequant.errors import FinequantError
from finequant.io import atomic_write_bytes
from finequant.quant.api import QuantizedModel
from finequant.quant.modules import QuantLayer
from finequant.runtime.onnx_graph import Graph, finish

log = logging.getLogger(__name__)
OPSET = 17
ACTIVATIONS = ("Relu", "Clip")
PASS_THROUGH = ("MaxPool",)  # ops whose output range is within their input's (max over a window)


def float_copy(model: nn.Module) -> nn.Module:
    """The model with every QuantLayer replaced by its float layer holding the dequantized weight."""
    net = copy.deepcopy(model).eval()
    for name, layer in list(net.named_modules()):
        if isinstance(layer, QuantLayer):
            inner = layer.layer
            with torch.no_grad():
                inner.weight.copy_(layer.quantized_weight().detach())
            net.set_submodule(name, inner)
    return net


@contextlib.contextmanager
def _static_same_padding(model: nn.Module, example: Any) -> Iterator[None]:
    """TF-style SAME padding (timm's ``Conv2dSame``) computes its pads from the input's shape at run time,
    which traces into ~200 float shape-arithmetic nodes on EfficientNet-Lite0 that every runtime evaluates
    and that ORT's ``quantize_static`` quantized (21.9% accuracy); the export's image size is fixed, so
    inside this block those layers pad by constants (the same pads, as one Pad node each)."""
    same = {n: m for n, m in model.named_modules() if type(m).__name__ == "Conv2dSame"}
    if not same or not isinstance(example, torch.Tensor):
        yield
        return
    from timm.layers.padding import pad_same_arg

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: sizes.__setitem__(n, tuple(args[0].shape[-2:])))
             for n, m in same.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    for n, m in same.items():
        pads = pad_same_arg(list(sizes[n]), list(m.kernel_size), list(m.stride), list(m.dilation))
        m.forward = functools.partial(_padded_conv, m, pads)  # an instance attribute: removed below
    try:
        yield
    finally:
        for m in same.values():
            del m.forward


def _padded_conv(conv: nn.Conv2d, pads: list[int], x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(x, pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


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
            with _static_same_padding(model.eval(), example):
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


def _range(scale: torch.Tensor, zero_point: torch.Tensor, spec) -> tuple[float, float]:
    s, z = float(scale.flatten()[0]), int(zero_point.flatten()[0])
    return (spec.qmin - z) * s, (spec.qmax - z) * s


def _u8_range(lo: float, hi: float) -> tuple[float, int]:
    """uint8 asymmetric qparams covering [lo, hi] (widened to include 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    return scale, int(min(255, max(0, round(-lo / scale))))


def _u8(scale: torch.Tensor, zero_point: torch.Tensor, what: str) -> tuple[float, int]:
    z = int(zero_point.flatten()[0])
    if not 0 <= z <= 255:
        raise FinequantError(f"{what}: zero point {z} is not uint8; export needs asymmetric uint8 activations")
    return float(scale.flatten()[0]), z


def _weight_key(array: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    return array.shape, hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).digest()


def _matmuls_by_weight(g: Graph) -> dict[tuple[tuple[int, ...], bytes], list[onnx.NodeProto]]:
    """MatMul nodes whose second input is a 2-D initializer used by that node alone, keyed by its value."""
    found: dict[tuple[tuple[int, ...], bytes], list[onnx.NodeProto]] = {}
    for n in g.graph.node:
        if n.op_type == "MatMul" and n.input[1] in g.inits and len(g.consumers(n.input[1])) == 1:
            value = numpy_helper.to_array(g.inits[n.input[1]])
            if value.ndim == 2 and value.dtype == np.float32:
                found.setdefault(_weight_key(value), []).append(n)
    return found


def _qdq_params(g: Graph, q: onnx.NodeProto) -> tuple[float, int]:
    return float(g.constant(q.input[1])), int(g.constant(q.input[2]))


def _export_qdq(qm: QuantizedModel, example: torch.Tensor, path: str | Path | None = None) -> tuple[
        onnx.ModelProto, dict[str, str], dict[str, tuple[float, int]]]:
    """The QDQ rewrite: the proto, each layer's fate, and the output quantization points it placed."""
    proto = export_float(float_copy(qm.model), example)
    g = Graph(proto)
    done: dict[str, str] = {}
    nodes_by_weight = {n.input[1]: n for n in g.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1}
    matmuls = _matmuls_by_weight(g)
    exported: list[tuple[onnx.NodeProto, QuantLayer, str]] = []
    for name, layer in qm.quant_layers().items():
        node = nodes_by_weight.get(f"{name}.weight")
        if node is None and isinstance(layer.layer, nn.Linear):
            # a Linear on a 3-D input (transformer blocks) exports as MatMul(x, W^T) + Add(bias), its weight
            # under a generated name: found by value (float_copy put the dequantized weight there)
            found = matmuls.get(_weight_key(layer.quantized_weight().detach().T.numpy()), [])
            node = found[0] if len(found) == 1 else None
            if len(found) > 1:
                done[name] = "float in ONNX: several MatMuls share its exact weight values"
                continue
        if layer.act_mode != "static" or layer.weight_spec.scheme != "affine" or layer.weight_spec.bits > 8:
            done[name] = f"float in ONNX: {layer.weight_spec.scheme}{layer.weight_spec.bits}/{layer.act_mode} " \
                         "has no int8 QDQ form"
            continue
        if node is None:
            done[name] = "float in ONNX: its weight is not a Conv/Gemm initializer after export"
            continue
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
            done[name] = "float in ONNX: Gemm without transB"
            continue
        exported.append((node, layer, name))
    producers: dict[str, str] = {}  # tensor -> the layer it is the output of (or of its sole Relu/Clip)
    for node, _, name in exported:
        producers[node.output[0]] = name
        after = g.consumers(node.output[0])
        if len(after) == 1 and after[0].op_type in ACTIVATIONS:
            producers[after[0].output[0]] = name
    points: dict[str, tuple[float, int]] = {}
    for node, layer, name in exported:
        a_scale, a_zp = _u8(layer.act_scale, layer.act_zero_point, name)
        x = node.input[0]
        pool = g.producer(x)
        if pool is not None and pool.op_type in PASS_THROUGH and pool.input[0] in producers \
                and len(g.consumers(pool.input[0])) == 1 and producers[pool.input[0]] not in points:
            # The layer before the MaxPool quantizes its output with this layer's input qparams: ORT then runs
            # the MaxPool on uint8 and keeps the graph in int8 (and NHWC) instead of converting back to float
            # around it. The simulation places the same point (max commutes with the monotone rounding).
            u = pool.input[0]
            g.qdq(u, a_scale, a_zp)
            points[producers[u]] = (a_scale, a_zp)
        # one QDQ per consumer: layers that share an input keep their own qparams, as in the simulation
        same = next((c.output[0] for c in g.consumers(x) if c.op_type == "QuantizeLinear"
                     and _qdq_params(g, c) == (a_scale, a_zp)), None)
        node.input[0] = g.consumers(same)[0].output[0] if same else g.qdq(x, a_scale, a_zp, [node])
        w_scale = layer.weight_scale.detach().flatten().numpy().astype(np.float32)
        codes = layer.weight_codes().numpy().astype(np.int8)
        if w_scale.size == 1:
            w_scale = np.full(codes.shape[0], w_scale[0], dtype=np.float32)
        w = node.input[1]
        matmul = node.op_type == "MatMul"  # its weight is W^T: output channels on axis 1
        wq = g.add_init(f"{w}_quantized", np.ascontiguousarray(codes.T) if matmul else codes)
        ws = g.add_init(f"{w}_scale", w_scale)
        wz = g.add_init(f"{w}_zero_point", np.zeros(codes.shape[0], dtype=np.int8))
        g.graph.node.append(helper.make_node("DequantizeLinear", [wq, ws, wz], [f"{w}_dequantized"],
                                             name=f"{w}_DQ", axis=1 if matmul else 0))
        node.input[1] = f"{w}_dequantized"
        g.drop_init(w)
        if len(node.input) > 2 and node.input[2] in g.inits:
            b = node.input[2]
            bias = numpy_helper.to_array(g.inits[b]).astype(np.float64)
            b_scale = (a_scale * w_scale).astype(np.float32)
            b_codes = np.round(bias / b_scale).clip(-(2**31), 2**31 - 1).astype(np.int32)
            bq = g.add_init(f"{b}_quantized", b_codes)
            bs = g.add_init(f"{b}_scale", b_scale)
            bz = g.add_init(f"{b}_zero_point", np.zeros_like(b_codes))
            g.graph.node.append(helper.make_node("DequantizeLinear", [bq, bs, bz], [f"{b}_dequantized"],
                                                 name=f"{b}_DQ", axis=0))
            node.input[2] = f"{b}_dequantized"
            g.drop_init(b)
        done[name] = "int8 QDQ"
    # Outputs: a Conv runs as an integer kernel only when a QuantizeLinear follows it (directly, or after
    # a Relu/Clip that ORT folds into the Q). Where none does, quantize the activation's output with the
    # layer's output range clipped to the activation's bounds, else the layer's own output; the simulation
    # places the same points (``place_output_quantization``; a point before a Relu/Clip with the clipped
    # range computes exactly what one after it does). Gemm and MatMul need none: ORT runs DQ -> Gemm as
    # QGemm with float output and DQ -> MatMul as MatMulIntegerToFloat (int8 x int8, float out; 0.69x fp32
    # time on a 197x192x768 block, AVX2), while a Q after the MatMul (QLinearMatMul) was slower (0.86x).
    for node, layer, name in exported:
        if node.op_type != "Conv" or name in points:
            continue
        y = node.output[0]
        consumers = g.consumers(y)
        if not consumers or all(c.op_type == "QuantizeLinear" for c in consumers):
            continue
        lo, hi = _range(layer.out_scale, layer.out_zero_point, layer.act_spec)
        if len(consumers) == 1 and consumers[0].op_type in ACTIVATIONS:
            act = consumers[0]
            z_consumers = g.consumers(act.output[0])
            if z_consumers and all(c.op_type == "QuantizeLinear" for c in z_consumers):
                continue
            a_lo, a_hi = g.activation_bounds(act)
            points[name] = _u8_range(min(max(lo, a_lo), a_hi), min(max(hi, a_lo), a_hi))
            g.qdq(act.output[0], *points[name])
        else:
            points[name] = _u8(layer.out_scale, layer.out_zero_point, name)
            g.qdq(y, *points[name])
    finish(proto, path)
    return proto, done, points


def export_qdq(qm: QuantizedModel, example: torch.Tensor, path: str | Path | None = None) -> tuple[
        onnx.ModelProto, dict[str, str]]:
    """QDQ int8 ONNX of a statically quantized model. Returns the proto and, per layer, what was done."""
    proto, done, points = _export_qdq(qm, example, path)
    simulated = {n: p for n, layer in qm.quant_layers().items() if (p := _point(layer)) is not None}
    exported = {n: (float(np.float32(scale)), zp) for n, (scale, zp) in points.items()}  # as the file stores them
    mismatched = sorted(n for n in simulated.keys() | exported.keys() if simulated.get(n) != exported.get(n))
    if mismatched:
        log.warning("the simulation places %d output quantization point(s) differently from the exported file "
                    "(%s); its accuracy is not what this file computes: quantize again, or call "
                    "place_output_quantization(qm, example) first", len(mismatched), ", ".join(mismatched[:5]))
    return proto, done


def _point(layer: QuantLayer) -> tuple[float, int] | None:
    if layer.deployed_out_scale is None:
        return None
    return float(layer.deployed_out_scale), int(layer.deployed_out_zero_point)


def place_output_quantization(qm: QuantizedModel, example: torch.Tensor) -> dict[str, tuple[float, int]]:
    """Give the simulation the output quantization points that the QDQ export places (see above), so
    that its accuracy is what ONNX Runtime computes from the exported file; returns them per layer."""
    _, _, points = _export_qdq(qm, example)
    for name, layer in qm.quant_layers().items():
        layer.set_deployed_output(points.get(name))
    return points
