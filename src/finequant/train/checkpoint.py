"""Per-epoch training checkpoints: atomic (temp, fsync, rename) and read back with weights_only=True."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from finequant.errors import ModelError
from finequant.io import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(out_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) so a crash never leaves half a file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    path = Path(out_dir) / CHECKPOINT
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        raise ModelError(f"nothing to resume: {path} does not exist (run without --resume to start fresh)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ModelError(f"{path} is damaged or not a finequant checkpoint ({e}); delete it to start fresh") from e
