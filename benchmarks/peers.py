"""The peers finequant is compared with, each configured as its documentation advises (one place, so every
benchmark states and uses the same settings).

ONNX Runtime ``quantize_static`` (onnxruntime.ai/docs/performance/model-optimizations/quantization.html):
``quant_pre_process`` first (symbolic shape inference + ORT's basic graph optimizations; where the symbolic
shape inference fails, as on ViT-B/16 and Swin-T, with ``skip_symbolic_shape=True``), QDQ format,
per-channel int8 weights, uint8 activations, MinMax calibration on the same batches finequant calibrates on,
``reduce_range=True`` on CPUs without VNNI (the docs' advice for u8 x s8 on AVX2, where 8-bit products
saturate), and the graph's shape arithmetic (nodes that do not depend on the input's values) excluded from
quantization via ``nodes_to_exclude``. ``quantize_dynamic``: per-channel int8 weights, ``reduce_range`` likewise.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx

from finequant.cpu import has_vnni

PEER_SETTINGS = {
    "ORT quantize_static": "quant_pre_process (skip_symbolic_shape where it fails); QDQ; per_channel=True; activation QUInt8, weight QInt8; MinMax; "
                           "reduce_range=not VNNI; shape arithmetic in nodes_to_exclude",
    "ORT quantize_dynamic": "per_channel=True; weight QInt8; reduce_range=not VNNI",
}


def shape_math_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of nodes whose outputs do not depend on the graph inputs' values (only on shapes and constants):
    quantizing them (ORT's default quantizes every Mul/Add/Div) rounds shapes and pads."""
    value = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    shape_math = []
    for node in model.graph.node:  # topologically ordered
        if node.op_type != "Shape" and any(i in value for i in node.input):
            value.update(node.output)
        elif node.name:
            shape_math.append(node.name)
    return shape_math


def ort_quantize_static(fp32: Path, out: Path, calib: list[np.ndarray], method: str = "MinMax",
                        op_types: list[str] | None = None) -> Path:
    """ONNX Runtime's static quantizer on ``fp32``, configured as above; returns ``out``."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"input": x}

    pre = out.with_suffix(".pre.onnx")
    with contextlib.chdir(out.parent):  # ORT's shape inference leaves temporaries in the working directory
        try:
            quant_pre_process(str(fp32), str(pre))
        except Exception:  # its symbolic shape inference fails on some graphs (ViT-B, Swin): its documented switch
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=not has_vnni(), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method), op_types_to_quantize=op_types,
                    nodes_to_exclude=shape_math_nodes(onnx.load(str(pre))))
    pre.unlink(missing_ok=True)
    return out


def ort_quantize_dynamic(fp32: Path, out: Path) -> Path:
    """ONNX Runtime's dynamic quantizer on ``fp32``, configured as above; returns ``out``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), per_channel=True, reduce_range=not has_vnni(), weight_type=QuantType.QInt8)
    return out
