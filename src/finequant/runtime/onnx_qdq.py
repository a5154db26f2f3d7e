"""Export to ONNX: fp32, or QDQ int8 carrying finequant's own qparams.

The float graph comes from ``torch.onnx.export`` (TorchScript exporter: no onnxscript needed). For
int8 we rewrite it ourselves rather than calling ORT's ``quantize_static``, so that our calibration,
per-layer bit widths and learned weights reach the runtime unchanged: each quantized Conv/Gemm gets
its weight as an int8 initializer + DequantizeLinear (per channel), its bias as int32 + DQ, and
QuantizeLinear/DequantizeLinear pairs on its input and, where no quantized layer follows, its output.
ONNX Runtime then fuses these into integer kernels (QLinearConv, QLinearMatMul, ...).
"""

from __future__ import annotations

import copy
import inspect
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
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
            torch.onnx.export(model.eval(), args, buf, kwargs=kwargs, dynamo=False, opset_version=OPSET,
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


def export_qdq(qm: QuantizedModel, example: torch.Tensor, path: str | Path | None = None) -> tuple[
        onnx.ModelProto, dict[str, str]]:
    """QDQ int8 ONNX of a statically quantized model. Returns the proto and, per layer, what was done."""
    proto = export_float(float_copy(qm.model), example)
    g = Graph(proto)
    done: dict[str, str] = {}
    quantized_inputs: dict[str, str] = {}
    nodes_by_weight = {n.input[1]: n for n in g.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1}
    exported: list[tuple[onnx.NodeProto, QuantLayer, str]] = []
    for name, layer in qm.quant_layers().items():
        node = nodes_by_weight.get(f"{name}.weight")
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
    for node, layer, name in exported:
        a_scale, a_zp = _u8(layer.act_scale, layer.act_zero_point, name)
        x = node.input[0]
        producer = g.producer(x)
        if producer is not None and producer.op_type in PASS_THROUGH and producer.input[0] not in quantized_inputs:
            # Same qparams on both sides of a MaxPool: ORT then runs it on uint8 and keeps the graph
            # in int8 (and NHWC) instead of converting back to float around it.
            u = producer.input[0]
            quantized_inputs[u] = g.qdq(u, a_scale, a_zp)
        quantized_inputs[x] = quantized_inputs.get(x) or g.qdq(x, a_scale, a_zp)
        w_scale = layer.weight_scale.detach().flatten().numpy().astype(np.float32)
        codes = layer.weight_codes().numpy().astype(np.int8)
        if w_scale.size == 1:
            w_scale = np.full(codes.shape[0], w_scale[0], dtype=np.float32)
        w = node.input[1]
        wq = g.add_init(f"{w}_quantized", codes)
        ws = g.add_init(f"{w}_scale", w_scale)
        wz = g.add_init(f"{w}_zero_point", np.zeros(codes.shape[0], dtype=np.int8))
        g.graph.node.append(helper.make_node("DequantizeLinear", [wq, ws, wz], [f"{w}_dequantized"],
                                             name=f"{w}_DQ", axis=0))
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
    # Outputs: a Conv/Gemm runs as an integer kernel only when a QuantizeLinear follows it (directly, or
    # after a Relu/Clip that ORT folds into the Q). Where none does, quantize the activation's output
    # (its range follows exactly from the calibrated pre-activation range, both functions being
    # monotone), else the layer's own output.
    for node, layer, name in exported:
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
            g.qdq(act.output[0], *_u8_range(min(max(lo, a_lo), a_hi), min(max(hi, a_lo), a_hi)))
        else:
            g.qdq(y, *_u8(layer.out_scale, layer.out_zero_point, name))
    finish(proto, path)
    return proto, done
