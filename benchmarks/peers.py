"""The peers finequant is compared with, each configured as its documentation advises (one place, so every
benchmark states and uses the same settings).

ONNX Runtime ``quantize_static`` (onnxruntime.ai/docs/performance/model-optimizations/quantization.html):
``quant_pre_process`` first (symbolic shape inference + ORT's basic graph optimizations; where the symbolic
shape inference fails, as on ViT-B/16 and Swin-T, with ``skip_symbolic_shape=True``), QDQ format,
per-channel int8 weights, uint8 activations, MinMax calibration on the same batches finequant calibrates on,
``reduce_range=True`` on CPUs without VNNI (the docs' advice for u8 x s8 on AVX2, where 8-bit products
saturate), and the graph's shape arithmetic (nodes that do not depend on the input's values) excluded from
quantization via ``nodes_to_exclude``. ``quantize_dynamic``: per-channel int8 weights, ``reduce_range`` likewise.

PyTorch's pt2e flow (pytorch.org/tutorials/prototype/pt2e_quant_x86_inductor.html, now in torchao):
``torch.export`` of the float model (``strict=True``), ``prepare_pt2e`` with ``X86InductorQuantizer`` and its
default config, calibration on the same batches, ``convert_pt2e``, then ``torch.compile`` with ``freezing`` (one
program per batch shape, as for finequant's torch-inductor backend).

NNCF + OpenVINO (docs.openvino.ai, "Basic quantization flow"): ``nncf.quantize`` on the fp32 ONNX with its
defaults (``preset`` performance, MinMax with its own statistics, fast bias correction), the calibration images
one per sample, ``subset_size`` = their number, compiled by OpenVINO's CPU plugin with the same thread count;
``model_type=nncf.ModelType.TRANSFORMER`` for transformers (DeiT).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from finequant.cpu import has_vnni
from finequant.runtime.backends import Runner
from finequant.runtime.torch_inductor import frozen_inference

PEER_SETTINGS = {
    "ORT quantize_static": "quant_pre_process (skip_symbolic_shape where it fails); QDQ; per_channel=True; activation QUInt8, weight QInt8; MinMax; "
                           "reduce_range=not VNNI; shape arithmetic in nodes_to_exclude",
    "ORT quantize_dynamic": "per_channel=True; weight QInt8; reduce_range=not VNNI",
    "pt2e X86InductorQuantizer + torch.compile": "torchao prepare_pt2e/convert_pt2e, "
                                                 "get_default_x86_inductor_quantization_config(); Inductor freezing",
    "NNCF + OpenVINO": "nncf.quantize(fp32 ONNX) with defaults (model_type=TRANSFORMER for DeiT), the calibration "
                       "images one per sample, subset_size = their number; OpenVINO CPU",
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


def pt2e_x86_inductor(model: torch.nn.Module, calib: list[torch.Tensor]) -> Runner:
    """PyTorch's pt2e static int8 flow, calibrated on ``calib`` and compiled per batch shape (see above)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    model = copy.deepcopy(model).eval()
    programs: dict[tuple[int, ...], Any] = {}

    def predict(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x)
        if t.shape not in programs:
            with torch.no_grad():
                # strict export: torch 2.14's default (non-strict) groups the calls of a module used twice
                # (torchvision ResNet's relu) into one partition, which X86InductorQuantizer rejects
                prepared = prepare_pt2e(torch.export.export(model, (t,), strict=True).module(), quantizer)
                pool = torch.cat(calib)  # the calibration samples in batches of the traced (static) shape
                pool = pool.repeat(-(-len(t) // len(pool)), 1, 1, 1)
                for chunk in pool.split(len(t)):
                    if len(chunk) == len(t):
                        prepared(chunk)
                programs[t.shape] = torch.compile(convert_pt2e(prepared))
        with frozen_inference():  # on every call, as for finequant's backend (see there)
            return programs[t.shape](t).numpy()

    return Runner("torch", predict, None)


def nncf_openvino(fp32: Path, calib: list[np.ndarray], threads: int, transformer: bool = False) -> Runner:
    """NNCF's post-training quantization of the fp32 ONNX with its defaults (``model_type=TRANSFORMER`` for a
    transformer, as NNCF advises), run by OpenVINO (see above)."""
    import nncf
    import openvino as ov

    samples = [x[i:i + 1] for x in calib for i in range(len(x))]  # NNCF counts (and advises) samples of one
    dataset = nncf.Dataset(samples, lambda x: {"input": x})
    kind = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    quantized = nncf.quantize(onnx.load(str(fp32)), dataset, subset_size=len(samples), **kind)
    out = fp32.with_name(fp32.stem + ".nncf.onnx")
    onnx.save(quantized, str(out))
    compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_NUM_THREADS": threads})
    return Runner("openvino", lambda x: compiled(x)[0], out)
