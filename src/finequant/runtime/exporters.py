"""Exporters (the functions behind :data:`finequant.catalog.EXPORTERS`) and the ``export`` verb.

Each exporter writes one file from a :class:`Deployable` and returns each quantized layer's fate
(``name -> how it runs``). :func:`export` picks the exporter the model's method declares, writes
to a temporary name, reloads the file, compares its outputs with the PyTorch model on an example
batch, and only then puts it under the final name: a rejected export leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finequant.catalog import EXPORTERS, METHODS
from finequant.errors import ConfigError, FinequantError
from finequant.models.base import forward
from finequant.runtime.agreement import cosine, simulation_agreement, simulation_explains
from finequant.runtime.backends import Deployable, to_numpy

log = logging.getLogger(__name__)

MIN_COSINE = 0.99
MIN_INT8_COMPUTE = 0.5  # below this share of multiply-adds in int8, the file is "int8" in name only


@torch.no_grad()
def layer_macs(model: torch.nn.Module, x: Any) -> dict[str, int]:
    """Multiply-adds of every Conv/Linear (wrapped or not) on one forward pass of ``x``."""
    from finequant.quant.modules import QuantLayer

    macs: dict[str, int] = {}

    def hook(name: str, layer: torch.nn.Module):
        def count(_module, _args, out) -> None:
            inner = layer.layer if isinstance(layer, QuantLayer) else layer
            per_output = inner.weight[0].numel()  # Conv: in/groups x kernel; Linear: in_features
            macs[name] = macs.get(name, 0) + out.numel() * per_output
        return count

    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, QuantLayer) or (isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))
                                               and not isinstance(_parent_of(model, n), QuantLayer))}
    handles = [m.register_forward_hook(hook(n, m)) for n, m in layers.items()]
    try:
        forward(model.eval(), x)
    finally:
        for h in handles:
            h.remove()
    return macs


def _parent_of(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    return model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else None


def int8_report(dep: Deployable, layers: dict[str, str], file_bytes: int) -> dict[str, Any]:
    """Which layers the file runs in int8, their share of the multiply-adds and of the Conv/Linear weights,
    the file's size against fp32, and warnings when the file is int8 in name only.

    Layers whose parent computes with their weight directly (``nn.MultiheadAttention``, torchvision's
    Swin attention) never run as modules, so no multiply-adds are counted for them: the weight share
    catches them."""
    from finequant.quant.modules import QuantLayer

    macs = layer_macs(dep.model, dep.example(1))
    int8 = {n for n, how in layers.items() if "int8" in how and "float" not in how}
    uncalled = {n: r for n, r in dep.quantized.float_layers().items()
                if isinstance(dep.model.get_submodule(n), (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))}
    weights = {n: (m.layer if isinstance(m, QuantLayer) else m).weight.numel() for n, m in dep.model.named_modules()
               if isinstance(m, QuantLayer) or n in uncalled}
    for n, m in dep.model.named_modules():  # its packed q/k/v projection is a bare parameter, not a layer
        if isinstance(m, torch.nn.MultiheadAttention) and m.in_proj_weight is not None:
            weights[f"{n}.in_proj_weight"] = m.in_proj_weight.numel()
            uncalled[f"{n}.in_proj_weight"] = "nn.MultiheadAttention multiplies by it itself: float"
    share = sum(v for n, v in macs.items() if n in int8) / (sum(macs.values()) or 1)
    weight_share = sum(v for n, v in weights.items() if n in int8) / (sum(weights.values()) or 1)
    fp32_bytes = 4 * sum(p.numel() for p in dep.loaded.model.parameters())
    report = {"int8_layers": len(int8),
              "float_layers": {**uncalled, **{n: how for n, how in layers.items() if n not in int8}},
              "int8_compute_share": share, "int8_weight_share": weight_share,
              "size_vs_fp32_weights": file_bytes / max(fp32_bytes, 1), "warnings": []}
    if min(share, weight_share) < MIN_INT8_COMPUTE:
        size = {**weights, **macs}
        heavy = sorted((n for n in size if n not in int8), key=size.get, reverse=True)[:5]
        report["warnings"].append(
            f"only {share:.0%} of the multiply-adds and {weight_share:.0%} of the Conv/Linear weights run in int8: "
            "the largest float layers are "
            + ", ".join(f"{n} ({report['float_layers'].get(n, 'not quantized')})" for n in heavy))
    return report


def onnx_fp32(dep: Deployable, path: Path) -> dict[str, str]:
    from finequant.runtime.onnx_qdq import export_float, float_copy

    model = dep.model if dep.quantized is None else float_copy(dep.model)
    export_float(model, dep.example(), path)
    return {}


def onnx_qdq(dep: Deployable, path: Path) -> dict[str, str]:
    from finequant.runtime.onnx_qdq import export_qdq

    return export_qdq(dep.quantized, dep.example(), path)[1]


def onnx_dynamic(dep: Deployable, path: Path) -> dict[str, str]:
    from finequant.runtime.onnx_dynamic import export_dynamic

    return export_dynamic(dep.quantized, dep.example(), path)[1]


def pt2(dep: Deployable, path: Path) -> dict[str, str]:
    ep = torch.export.export(dep.model.eval(), (dep.example(2),), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(ep, str(path))
    return {}


def default_onnx_exporter(dep: Deployable) -> str:
    """The ONNX exporter for this model: fp32 for a float model, else its method's own."""
    if dep.quantized is None:
        return "onnx-fp32"
    fmt = METHODS.info(dep.method).exporter
    if fmt is None:
        raise FinequantError(f"'{dep.method}' models have no integer ONNX form; run them on 'torch' (fp16/bf16) "
                             "or 'torch-sim', or export the float model")
    if EXPORTERS.info(fmt).task not in ("any", dep.loaded.task):
        raise FinequantError(f"exporter {fmt} covers {EXPORTERS.info(fmt).task} models; a {dep.loaded.task} model "
                             f"quantized with '{dep.method}' has no ONNX form yet (use method 'dynamic' for text)")
    return fmt


def export_with(fmt: str, dep: Deployable, path: Path) -> dict[str, str]:
    """Run one exporter (no verification)."""
    info = EXPORTERS.info(fmt)
    if info.task not in ("any", dep.loaded.task):
        raise ConfigError(f"format {fmt} covers {info.task} models; this is a {dep.loaded.task} model")
    return EXPORTERS.get(fmt)(dep, path)


def _run_file(fmt: str, path: Path, x: Any) -> np.ndarray:
    if fmt == "pt2":
        with torch.no_grad():
            return torch.export.load(str(path)).module()(x).numpy()
    from finequant.runtime.ort import run, session

    return run(session(path), to_numpy(x))


def export(model: Any, path: str | Path, format: str = "onnx", *, loaded: Any = None) -> dict[str, Any]:
    """Export ``model`` (folder, LoadedModel, or QuantizedModel with ``loaded``) to ``path`` and verify it.

    ``format``: ``onnx`` (the model's own ONNX form), ``pt2``, or any EXPORTERS name. Returns the
    report: file size, each layer's fate, cosine and top-1 agreement of the file vs PyTorch."""
    dep = Deployable.of(model, loaded)
    fmt = default_onnx_exporter(dep) if format == "onnx" else format
    if fmt not in EXPORTERS:
        raise ConfigError(f"format: {EXPORTERS.unknown_message(fmt)} (or 'onnx' for the model's own ONNX form)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")  # torch.export wants its suffix
    try:
        layers = export_with(fmt, dep, tmp)
        x = dep.example(4)
        with torch.no_grad():
            reference = forward(dep.model.eval(), x).float().numpy()
        got = _run_file(fmt, tmp, x)
        cos = cosine(got, reference)
        report = {"path": str(path), "format": fmt, "bytes": tmp.stat().st_size, "layers": layers,
                  "cosine": cos, "top1_agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
                  "max_abs_diff": float(np.abs(got - reference).max()), "warnings": []}
        integer = dep.quantized is not None and fmt in ("onnx-qdq", "onnx-dynamic")
        agreement = simulation_agreement(dep.model, x, got) if integer and np.isfinite(got).all() else None
        # below the cosine floor, an int8 file is still what was simulated when it departs from the simulation by
        # no more than the simulation's own rounding-flip noise (near-tied random-weight models)
        if not np.isfinite(got).all() or not (cos >= MIN_COSINE or agreement and simulation_explains(agreement)):
            raise FinequantError(f"the exported file disagrees with the PyTorch model (cosine {cos:.4f}, "
                                 f"finite outputs: {bool(np.isfinite(got).all())}); nothing was written to {path}")
        if integer:
            report.update(int8_report(dep, layers, report["bytes"]))
            report["simulation"] = agreement
            if not simulation_explains(agreement):
                report["warnings"].append(
                    f"the simulation explains only {agreement['explained']:.0%} of what int8 changes in this file "
                    f"(error vs simulation {agreement['sim_rel_error']:.4f}, vs float "
                    f"{agreement['int8_rel_error']:.4f}, rounding-flip noise {agreement['flip_noise']:.4f}); accuracy "
                    "measured in simulation may not be what it computes: evaluate the file on onnxruntime")
        for warning in report["warnings"]:
            log.warning("%s: %s", path, warning)
        os.replace(tmp, path)
        return report
    finally:
        tmp.unlink(missing_ok=True)
