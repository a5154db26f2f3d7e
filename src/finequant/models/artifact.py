"""Model artifacts: safetensors weights + a JSON config that is enough to rebuild them (no pickles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save

from finequant.errors import ModelError, UntrustedFileError
from finequant.io import atomic_write_bytes, atomic_write_text
from finequant.models.base import LoadedModel, Preprocess
from finequant.models.weights import load_into, load_state_dict

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "model.json"


def save_artifact(loaded: LoadedModel, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (plus encoder config and tokenizer for text)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage (tied weights), so each tensor is cloned.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in loaded.model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS, save(state, metadata={"format": "pt"}))
    return write_model_config(loaded, out)


def write_model_config(loaded: LoadedModel, out: Path) -> Path:
    """``model.json`` (and, for text, the encoder config and tokenizer): the architecture without weights."""
    out.mkdir(parents=True, exist_ok=True)
    if loaded.task == "text":
        loaded.model.encoder.config.save_pretrained(out / "encoder")
        loaded.tokenizer.save_pretrained(out / "encoder")
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "spec": loaded.spec,
        "task": loaded.task,
        "recipe": loaded.recipe,
        "head_name": loaded.head_name,
        "num_classes": loaded.num_classes,
        "classes": loaded.classes,
        "preprocess": loaded.preprocess.to_dict() if loaded.preprocess else None,
    }
    atomic_write_text(out / CONFIG, json.dumps(config, indent=2))
    return out


def load_artifact(path: str | Path, *, trust_remote_code: bool = False) -> LoadedModel:
    """Rebuild a model saved by :func:`save_artifact`: architecture from the JSON, then the weights."""
    path = Path(path)
    loaded = build_from_config(path, trust_remote_code=trust_remote_code)
    load_into(loaded.model, load_state_dict(path / WEIGHTS), source=str(path))
    return loaded


def build_from_config(path: Path, *, trust_remote_code: bool = False) -> LoadedModel:
    """The architecture described by ``path/model.json``, with freshly initialized weights."""
    from finequant.models import load_model

    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise ModelError(f"{path} is not a finequant model folder: {CONFIG} is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
        version, recipe, n, task = cfg["format_version"], dict(cfg["recipe"]), int(cfg["num_classes"]), cfg["task"]
        spec = recipe["spec"]
        if not isinstance(version, int) or not isinstance(spec, str) or task not in ("image", "text") or n < 1:
            raise ValueError("format_version must be an integer, recipe.spec a string, task image or text, "
                             "num_classes >= 1")
        preprocess = Preprocess.from_dict(cfg["preprocess"]) if cfg.get("preprocess") else None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{cfg_path} is damaged ({type(e).__name__}: {e}); re-save the model") from e
    if recipe.get("trust_remote_code") and not trust_remote_code:
        raise UntrustedFileError(f"{path} was built by code from its source ({spec}), trusted when it was made; "
                                 "pass --trust-remote-code (Python: trust_remote_code=True) to run that code again")
    if version > FORMAT_VERSION:
        raise ModelError(f"{cfg_path} has format {version}; this finequant reads up to {FORMAT_VERSION}: upgrade")
    if cfg["task"] == "text":
        spec = f"hf:{path / 'encoder'}"
    loaded = load_model(spec, pretrained=False, num_classes=n, classes=cfg.get("classes"),
                        trust_remote_code=trust_remote_code)
    loaded.spec, loaded.new_keys = cfg["spec"], []
    loaded.recipe = recipe
    if preprocess is not None:
        loaded.preprocess = preprocess
    return loaded
