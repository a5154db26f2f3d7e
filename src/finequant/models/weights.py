"""Loading state dicts safely: safetensors, or torch.load(weights_only=True), never arbitrary pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file

from finequant.errors import ModelError, UntrustedFileError


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pt/.pth/.bin`` without executing code."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelError(f"weights file is empty (0 bytes): {path}; re-export or re-download it")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own SafetensorError on a bad header
            raise ModelError(f"cannot read safetensors file {path}: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UntrustedFileError(
            f"{path} is a pickle that needs arbitrary code to load, which finequant refuses "
            f"(torch.load weights_only=True said: {str(e).splitlines()[0]}). Convert it to "
            "safetensors in a trusted environment, or save only the state_dict."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ModelError(f"cannot read weights file {path} (truncated or not a torch file?): {e}") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} does not hold a state_dict (a dict of tensors)")
    return obj


def check_tensor(name: str, value: torch.Tensor, expected: torch.Tensor, source: str) -> None:
    """A loaded tensor must have the kind of dtype the model holds there and only finite values."""
    if expected.is_floating_point() and not value.is_floating_point():
        raise ModelError(f"weights from {source}: '{name}' is {value.dtype} but the model holds floats there; "
                         "the file is damaged or was relabelled: re-export it")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ModelError(f"weights from {source}: '{name}' holds {bad} NaN/Inf value(s); the checkpoint is broken "
                         "(diverged training or a damaged file): use an earlier checkpoint")


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
              skip_prefix: str | None = None) -> list[str]:
    """Load ``state`` into ``model`` strictly, except keys under ``skip_prefix`` (a head being replaced).

    Returns the keys left at their initial values. Shape mismatches name the key and both shapes.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (skip_prefix and k.startswith(skip_prefix + "."))]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ModelError(
            f"weights from {source} do not fit the architecture: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}. Check that --arch/--model names the right network."
        )
    usable = {}
    for k, v in state.items():
        if own[k].shape != v.shape:
            if skip_prefix and k.startswith(skip_prefix + "."):
                continue
            raise ModelError(
                f"weights from {source}: '{k}' has shape {tuple(v.shape)} but the model expects "
                f"{tuple(own[k].shape)}. The checkpoint belongs to another architecture or head size: pass the "
                "--arch it was trained with, or load it with load_model(..., weights=PATH) so the head follows it."
            )
        check_tensor(k, v, own[k], source)
        usable[k] = v
    model.load_state_dict(usable, strict=False)
    return [k for k in own if k not in usable]
