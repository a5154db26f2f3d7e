"""Quantized artifacts: bit-packed integer weights + qparams in safetensors, the scheme in JSON.

``quant.safetensors`` holds, per quantized layer ``N``: ``N.weight.codes`` (packed uint8),
``N.weight.scale``/``N.weight.zero_point`` (affine and pow2), ``N.weight.codebook`` (pow2 levels or
k-means centroids), ``N.act.scale``/``N.act.zero_point`` (static activations); all other tensors
stay float. ``quant.json`` gives each layer's scheme and shape, the BN folds, and the float
architecture (``model.json``), so :func:`load_quantized` rebuilds the model without pickles.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from finequant.cpu import cpu_class, has_vnni
from finequant.errors import ModelError
from finequant.io import atomic_write_bytes, atomic_write_text
from finequant.models.artifact import build_from_config, write_model_config
from finequant.models.base import LoadedModel
from finequant.quant.affine import dequantize
from finequant.quant.api import QuantizedModel, QParams, quantize_inference
from finequant.quant.config import QuantConfig
from finequant.quant.modules import LayerQParams
from finequant.quant.nonlinear import kmeans_dequantize, pow2_dequantize
from finequant.quant.packing import pack_codes, unpack_codes
from finequant.quant.spec import QuantSpec

QUANT_WEIGHTS, QUANT_CONFIG = "quant.safetensors", "quant.json"
log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: activation points on tensors (static methods)


def _code_offset(spec: QuantSpec) -> int:
    """The smallest code of a scheme, so packed codes start at 0."""
    if spec.scheme == "pow2":
        return -(2 ** (spec.bits - 1) - 1)  # sign * level index in [-(2^(b-1)-1), 2^(b-1)-1]
    return 0 if spec.scheme == "kmeans" else spec.qmin


def save_quantized(qm: QuantizedModel, loaded: LoadedModel, out_dir: str | Path) -> Path:
    """Write ``quant.safetensors`` + ``quant.json`` + ``model.json``; returns the folder."""
    out = Path(out_dir)
    write_model_config(loaded, out)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    wrapped = set()
    for name, layer in qm.quant_layers().items():
        spec = layer.weight_spec
        wrapped.add(f"{name}.layer.weight")
        entry: dict[str, Any] = {"weight_spec": asdict(spec), "shape": list(layer.layer.weight.shape),
                                 "act_mode": layer.act_mode,
                                 "act_spec": asdict(layer.act_spec) if layer.act_spec else None}
        if spec.is_float:
            dtype = torch.float16 if spec.scheme == "fp16" else torch.bfloat16
            tensors[f"{name}.weight.cast"] = layer.layer.weight.detach().to(dtype).contiguous()
        else:
            tensors[f"{name}.weight.codes"] = pack_codes(layer.weight_codes(), spec.bits, _code_offset(spec))
        for key, t in (("weight.scale", layer.weight_scale), ("weight.zero_point", layer.weight_zero_point),
                       ("weight.codebook", layer.codebook), ("act.scale", layer.act_scale),
                       ("act.zero_point", layer.act_zero_point)):
            if t is None or (key == "weight.zero_point" and not t.any()):  # symmetric: all zero, not stored
                continue
            tensors[f"{name}.{key}"] = t.detach().contiguous().clone()
        layers[name] = entry
    for key, t in qm.model.state_dict().items():
        if key in wrapped or key.rsplit(".", 1)[-1] in ("act_scale", "act_zero_point", "weight_scale",
                                                           "weight_zero_point", "codebook"):
            continue
        tensors[f"float.{key}"] = t.detach().cpu().clone().contiguous()
    atomic_write_bytes(out / QUANT_WEIGHTS, save(tensors, metadata={"format": "finequant-quant"}))
    points = None if qm.points is None else qm.points.state()
    atomic_write_text(out / QUANT_CONFIG, json.dumps({
        "format_version": FORMAT_VERSION, "config": asdict(qm.config), "layers": layers, "cpu": cpu_class(),
        "folded": [list(p) for p in qm.folded], "rewrites": qm.rewrites, "points": points}, indent=2))
    return out


def _decode_weight(entry: dict[str, Any], tensors: dict[str, torch.Tensor], name: str) -> tuple[
        torch.Tensor, LayerQParams]:
    spec = QuantSpec(**entry["weight_spec"])
    shape = tuple(entry["shape"])
    get = tensors.get
    act_spec = QuantSpec(**entry["act_spec"]) if entry["act_spec"] else None
    scale = get(f"{name}.weight.scale")
    zero_point = get(f"{name}.weight.zero_point")
    if zero_point is None and scale is not None and spec.scheme == "affine":
        zero_point = torch.zeros(scale.shape, dtype=torch.int32)
    q = LayerQParams(spec, scale, zero_point, entry["act_mode"], act_spec, get(f"{name}.act.scale"),
                     get(f"{name}.act.zero_point"), get(f"{name}.weight.codebook"))
    if spec.is_float:
        return tensors[f"{name}.weight.cast"].float(), q
    codes = unpack_codes(tensors[f"{name}.weight.codes"], spec.bits, _code_offset(spec), shape)
    if spec.scheme == "pow2":
        return pow2_dequantize(codes, q.weight_scale, q.codebook), q
    if spec.scheme == "kmeans":
        return kmeans_dequantize(codes, q.codebook), q
    return dequantize(codes, q.weight_scale, q.weight_zero_point, spec), q


def _check_cpu(path: Path, made_on: str | None, config: QuantConfig) -> None:
    """Warn when int8 weights chosen for one CPU class run on another whose kernels compute them differently."""
    here = cpu_class()
    if made_on is None or made_on == here or config.info.exporter is None:
        return
    if config.reduce_range is False and not has_vnni():
        log.warning("%s was quantized on %s with 8-bit weights; this CPU (%s) has no VNNI, and ONNX Runtime's u8 x "
                    "s8 kernels saturate 8-bit products here, so the runtime may score differently from the "
                    "simulation (eval checks it): quantize again on this CPU (7-bit weights)", path, made_on, here)
    elif config.reduce_range and has_vnni():
        log.info("%s was quantized on %s with 7-bit weights; this CPU (%s) runs 8-bit ones exactly: quantizing "
                 "again here may gain a little accuracy", path, made_on, here)


def load_quantized(path: str | Path, *, trust_remote_code: bool = False) -> tuple[LoadedModel, QParams]:
    """Rebuild a quantized model written by :func:`save_quantized` (the model is ready for inference)."""
    path = Path(path)
    if not (path / QUANT_CONFIG).is_file():
        raise ModelError(f"{path} is not a finequant quantized model: {QUANT_CONFIG} is missing")
    try:
        meta = json.loads((path / QUANT_CONFIG).read_text())
        version = meta.get("format_version", 0)
        if not isinstance(version, int) or not isinstance(meta.get("layers"), dict):
            raise ValueError("format_version must be an integer and layers an object")
    except (OSError, ValueError, AttributeError) as e:
        raise ModelError(f"{path / QUANT_CONFIG} is damaged ({e}); quantize the model again") from e
    if version > FORMAT_VERSION:
        raise ModelError(f"{path}: quantized format {version} is newer than this finequant")
    try:
        tensors = load_file(str(path / QUANT_WEIGHTS))
    except Exception as e:  # safetensors raises its own SafetensorError on a truncated or damaged file
        raise ModelError(f"{path / QUANT_WEIGHTS} is damaged or truncated ({e}); quantize the model again") from e
    loaded = build_from_config(path, trust_remote_code=trust_remote_code)
    decoded = {name: _decode_weight(entry, tensors, name) for name, entry in meta["layers"].items()}
    points = meta.get("points")
    if any(q.act_mode == "static" for _, q in decoded.values()) and not isinstance(points, dict):
        raise ModelError(f"{path} was quantized by a finequant older than its activation points (format "
                         f"{version}); quantize the model again")
    qparams = QParams({n: q for n, (_, q) in decoded.items()}, folded=[tuple(p) for p in meta["folded"]],
                      rewrites=meta.get("rewrites", {}),
                      points=None if points is None else {k: (float(v[0]), int(v[1])) for k, v in points.items()})
    config = QuantConfig.from_dict(meta["config"])
    _check_cpu(path, meta.get("cpu"), config)
    model = quantize_inference(loaded, qparams, config)
    float_state = {k[len("float."):]: v for k, v in tensors.items() if k.startswith("float.")}
    missing, unexpected = model.load_state_dict(float_state, strict=False)
    if unexpected:
        raise ModelError(f"{path}: tensors {unexpected[:5]} do not fit the architecture in model.json")
    with torch.no_grad():
        for name, (weight, _) in decoded.items():
            layer = model.get_submodule(name)
            layer.layer.weight.copy_(weight.to(layer.layer.weight.dtype))
            layer.load_qparams(qparams[name])
    loaded.model = model.eval()
    return loaded, qparams
