"""Exporters (the functions behind :data:`finequant.catalog.EXPORTERS`) and the ``export`` verb.

Each exporter writes one file from a :class:`Deployable` and returns each quantized layer's fate
(``name -> how it runs``). :func:`export` picks the exporter the model's method declares, writes
to a temporary name, reloads the file, compares its outputs with the PyTorch model on an example
batch, and only then puts it under the final name: a rejected export leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finequant.catalog import EXPORTERS, METHODS
from finequant.errors import ConfigError, FinequantError
from finequant.models.base import forward
from finequant.runtime.backends import Deployable, to_numpy

MIN_COSINE = 0.99


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
        cos = float((got * reference).sum() / (np.linalg.norm(got) * np.linalg.norm(reference)))
        report = {"path": str(path), "format": fmt, "bytes": tmp.stat().st_size, "layers": layers,
                  "cosine": cos, "top1_agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
                  "max_abs_diff": float(np.abs(got - reference).max())}
        if not np.isfinite(got).all() or not cos >= MIN_COSINE:  # `not >=` also catches NaN
            raise FinequantError(f"the exported file disagrees with the PyTorch model (cosine {cos:.4f}, "
                                 f"finite outputs: {bool(np.isfinite(got).all())}); nothing was written to {path}")
        os.replace(tmp, path)
        return report
    finally:
        tmp.unlink(missing_ok=True)
