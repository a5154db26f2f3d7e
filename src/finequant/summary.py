"""``summary.json``: every command's machine-readable record (metrics, sizes, timings, config, versions)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from finequant.io import atomic_write_text

SUMMARY = "summary.json"
_VERSIONED = ("finequant", "torch", "torchvision", "timm", "transformers", "onnx", "onnxruntime",
              "numpy", "safetensors", "openvino")


def environment() -> dict[str, Any]:
    """CPU, threads and library versions, for reproducibility and bug reports."""
    import torch

    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "versions": versions,
    }


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, numpy and torch scalars -> plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return obj.tolist()
    return obj


def write_summary(out_dir: str | Path, command: str, *, config: Any = None, metrics: Any = None,
                  sizes: Any = None, timings: Any = None, **extra: Any) -> Path:
    """Write ``OUT/summary.json`` atomically and return its path."""
    out = Path(out_dir)
    record = {
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "metrics": metrics or {},
        "sizes": sizes or {},
        "timings": timings or {},
        **extra,
        "environment": environment(),
    }
    path = out / SUMMARY
    atomic_write_text(path, json.dumps(to_jsonable(record), indent=2, sort_keys=False))
    return path


def read_summary(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / SUMMARY).read_text())
