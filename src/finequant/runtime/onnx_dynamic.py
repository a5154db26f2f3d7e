"""Export a dynamically quantized model (transformers, MLPs) to ONNX with integer MatMuls.

Each quantized Linear's ``MatMul`` becomes ``DynamicQuantizeLinear`` (uint8 activations, range
measured per batch at run time, as in finequant's ``dynamic`` method) -> ``MatMulInteger`` with
finequant's own int8 per-channel weight codes -> scale by ``x_scale * w_scale``. ONNX Runtime fuses
this into its ``DynamicQuantizeMatMul`` kernel. Text models take ``input_ids``/``attention_mask``
with dynamic batch and sequence axes (see :func:`finequant.runtime.onnx_qdq.export_float`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from finequant.quant.api import QuantizedModel
from finequant.runtime.onnx_graph import Graph, finish
from finequant.runtime.onnx_qdq import export_float, float_copy


def export_dynamic(qm: QuantizedModel, example: dict[str, torch.Tensor] | torch.Tensor,
                   path: str | Path | None = None) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Integer-MatMul ONNX of a ``dynamic``-method model; returns the proto and each layer's fate."""
    proto = export_float(float_copy(qm.model), example)
    g = Graph(proto)
    # The exporter renames and transposes Linear weights: find each by value (W^T of the dequantized weight).
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, init in g.inits.items():
        by_shape.setdefault(tuple(init.dims), []).append(name)
    done: dict[str, str] = {}
    for name, layer in qm.quant_layers().items():
        spec = layer.weight_spec
        if isinstance(layer.layer, torch.nn.Embedding) and spec.scheme == "affine" and spec.bits <= 8:
            done[name] = _embedding(g, layer, name, by_shape)
            continue
        if layer.act_mode != "dynamic" or spec.scheme != "affine" or spec.bits > 8 or \
                not isinstance(layer.layer, torch.nn.Linear):
            done[name] = f"float in ONNX: {spec.scheme}{spec.bits}/{layer.act_mode} has no integer MatMul form here"
            continue
        wt = layer.quantized_weight().detach().numpy().T
        copies = {n for n in by_shape.get(wt.shape, []) if n in g.inits
                  and np.array_equal(numpy_helper.to_array(g.inits[n]), wt)}
        # every call: the exporter reads W^T in a shared Linear's later calls (ALBERT's layers) through Identity
        copies |= {n.output[0] for n in g.graph.node if n.op_type == "Identity" and n.input[0] in copies}
        nodes = [n for n in g.graph.node if n.op_type == "MatMul" and n.input[1] in copies]
        # a Linear on a 2-D input (the classifier head after pooling) exports as Gemm(x, W, b, transB=1)
        nodes = nodes or [n for n in g.graph.node if n.op_type == "Gemm" and n.input[1] == f"{name}.weight"
                          and _plain_gemm(n)]
        if not nodes:
            done[name] = ("not in the exported graph: nothing the outputs depend on reads it (e.g. a pooler the "
                          "head does not use)" if not copies and f"{name}.weight" not in g.inits else
                          "float in ONNX: its weight is not a MatMul/Gemm initializer after export")
            continue
        _rewrite(g, nodes, layer, name)
        done[name] = "int8 dynamic (MatMulInteger)"
    finish(proto, path)
    return proto, done


def _embedding(g: Graph, layer: Any, name: str, by_shape: dict[tuple[int, ...], list[str]]) -> str:
    """Store an int8 embedding table as int8 codes + per-row scales, gathered first and dequantized
    after the Gather (only the looked-up rows are converted, not the whole table per run)."""
    w = layer.quantized_weight().detach().numpy()
    init = next((n for n in by_shape.get(w.shape, []) if n in g.inits
                 and np.array_equal(numpy_helper.to_array(g.inits[n]), w)), None)
    gathers = [n for n in g.graph.node if n.op_type == "Gather" and init is not None and n.input[0] == init]
    if not gathers:
        return "float in ONNX: its table is not a Gather initializer after export"
    p = name.replace(".", "_")
    codes = g.add_init(f"{p}_int8", layer.weight_codes().numpy().astype(np.int8))
    scale = g.add_init(f"{p}_scale", layer.weight_scale.detach().flatten().numpy().astype(np.float32))
    last = g.add_init(f"{p}_last_axis", np.array([-1], dtype=np.int64))
    for k, node in enumerate(gathers):
        ids, out, q = node.input[1], node.output[0], f"{p}_{k}"
        g.graph.node.remove(node)
        g.graph.node.extend([
            helper.make_node("Gather", [codes, ids], [f"{q}_codes"], name=f"{q}_GatherCodes"),
            helper.make_node("Gather", [scale, ids], [f"{q}_rowscale"], name=f"{q}_GatherScale"),
            helper.make_node("Unsqueeze", [f"{q}_rowscale", last], [f"{q}_rowscale2"], name=f"{q}_Unsqueeze"),
            helper.make_node("Cast", [f"{q}_codes"], [f"{q}_codesf"], name=f"{q}_Cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [f"{q}_codesf", f"{q}_rowscale2"], [out], name=f"{q}_Dequantize")])
    g.drop_init(init)
    return "int8 table, rows dequantized after Gather"


def _plain_gemm(node: onnx.NodeProto) -> bool:
    """Y = X W^T + B (transB=1, no transA, alpha = beta = 1): a Linear layer."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return attrs.get("transB") == 1 and not attrs.get("transA") and attrs.get("alpha", 1.0) == 1.0 \
        and attrs.get("beta", 1.0) == 1.0


def _rewrite(g: Graph, nodes: list[onnx.NodeProto], layer: Any, name: str) -> None:
    """Each of ``nodes`` (the layer's MatMul/Gemm calls) as DynamicQuantizeLinear -> MatMulInteger with the
    layer's int8 codes, stored once."""
    codes = layer.weight_codes().numpy().astype(np.int8).T  # (in, out)
    scale = layer.weight_scale.detach().flatten().numpy().astype(np.float32)
    if scale.size == 1:
        scale = np.full(codes.shape[1], scale[0], dtype=np.float32)
    p = name.replace(".", "_")
    wq = g.add_init(f"{p}_weight_int8", np.ascontiguousarray(codes))
    wz = g.add_init(f"{p}_weight_zero_point", np.zeros(codes.shape[1], dtype=np.int8))
    ws = g.add_init(f"{p}_weight_scale", scale)
    for k, node in enumerate(nodes):
        x, y, q = node.input[0], node.output[0], p if k == 0 else f"{p}_call{k}"
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        new = [helper.make_node("DynamicQuantizeLinear", [x], [f"{q}_xq", f"{q}_xs", f"{q}_xz"], name=f"{q}_DQL"),
               helper.make_node("MatMulInteger", [f"{q}_xq", wq, f"{q}_xz", wz], [f"{q}_acc"], name=f"{q}_MMI"),
               helper.make_node("Cast", [f"{q}_acc"], [f"{q}_accf"], name=f"{q}_Cast", to=onnx.TensorProto.FLOAT),
               helper.make_node("Mul", [f"{q}_xs", ws], [f"{q}_scale"], name=f"{q}_ScaleMul"),
               helper.make_node("Mul", [f"{q}_accf", f"{q}_scale"], [f"{q}_mm" if bias else y], name=f"{q}_Rescale")]
        if bias:
            new.append(helper.make_node("Add", [f"{q}_mm", bias], [y], name=f"{q}_Bias"))
        g.graph.node.remove(node)
        g.graph.node.extend(new)
    for w in {n.input[1] for n in nodes}:
        identity = next((n for n in g.graph.node if n.op_type == "Identity" and n.output[0] == w), None)
        if identity is not None:
            g.graph.node.remove(identity)
            w = identity.input[0]
        g.drop_init(w)
