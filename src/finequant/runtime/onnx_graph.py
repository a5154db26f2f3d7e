"""A small editable view of an ONNX graph, shared by the QDQ and the dynamic int8 rewrites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from finequant.errors import FinequantError
from finequant.io import atomic_write_bytes


class Graph:
    """Small helper over an ONNX graph: producers, consumers, initializers, unique names."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto, self.graph = proto, proto.graph
        self.inits = {i.name: i for i in self.graph.initializer}

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of ``tensor`` if it is an initializer or a Constant node's output."""
        if tensor in self.inits:
            return numpy_helper.to_array(self.inits[tensor])
        for n in self.graph.node:
            if n.op_type == "Constant" and n.output[0] == tensor:
                return numpy_helper.to_array(n.attribute[0].t)
        return None

    def activation_bounds(self, act: onnx.NodeProto) -> tuple[float, float]:
        """Output range limits of a Relu or Clip node (Clip's min/max inputs, when constant)."""
        if act.op_type == "Relu":
            return 0.0, float("inf")
        bounds = []
        for i, default in ((1, -float("inf")), (2, float("inf"))):
            value = self.constant(act.input[i]) if len(act.input) > i and act.input[i] else None
            bounds.append(default if value is None else float(value))
        return bounds[0], bounds[1]

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return next((n for n in self.graph.node if tensor in n.output), None)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if tensor in n.input]

    def drop_init(self, name: str) -> None:
        """Remove an initializer that no node uses any more (the float weight we replaced)."""
        if name in self.inits and not self.consumers(name):
            self.graph.initializer.remove(self.inits.pop(name))

    def add_init(self, name: str, array: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        self.inits[name] = self.graph.initializer[-1]
        return name

    def unique(self, name: str) -> str:
        """``name``, or ``name_2``, ``name_3``... when a node output or initializer has it already."""
        taken = self.inits.keys() | {o for n in self.graph.node for o in n.output}
        out, i = name, 1
        while out in taken:
            i += 1
            out = f"{name}_{i}"
        return out

    def qdq(self, tensor: str, scale: float, zero_point: int, consumers: list[onnx.NodeProto] | None = None) -> str:
        """Insert QuantizeLinear -> DequantizeLinear (uint8, per tensor) on ``tensor`` for ``consumers``
        (default: all of them); returns the dequantized tensor's name."""
        consumers = self.consumers(tensor) if consumers is None else consumers
        q = self.unique(f"{tensor}_quantized")  # a second QDQ on one tensor (another consumer's) gets _2
        suffix = q[len(f"{tensor}_quantized"):]
        s = self.add_init(f"{tensor}_scale{suffix}", np.array(scale, dtype=np.float32))
        z = self.add_init(f"{tensor}_zero_point{suffix}", np.array(zero_point, dtype=np.uint8))
        dq = f"{tensor}_dequantized{suffix}"
        self.graph.node.append(helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=f"{tensor}_Q{suffix}"))
        self.graph.node.append(helper.make_node("DequantizeLinear", [q, s, z], [dq], name=f"{tensor}_DQ{suffix}"))
        for node in consumers:  # a graph output keeps the float tensor
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = dq
        return dq


def topological_sort(graph: onnx.GraphProto) -> None:
    """Re-order nodes so every input is produced before use (ONNX requires it; we appended Q/DQ nodes)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progress = False
        for node in list(pending):
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                pending.remove(node)
                progress = True
        if not progress:
            raise FinequantError(f"ONNX graph has a cycle or a missing input near {pending[0].name}")
    del graph.node[:]
    graph.node.extend(ordered)


def finish(proto: onnx.ModelProto, path: str | Path | None) -> None:
    """Order the nodes, check the model, and write it atomically (when ``path`` is given)."""
    topological_sort(proto.graph)
    onnx.checker.check_model(proto)
    if path is not None:
        atomic_write_bytes(path, proto.SerializeToString())


def graph_ops(proto: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in proto.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
