"""Torch datasets and loaders over :class:`LabeledData` (images decoded lazily, texts tokenized per batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from finequant.data.base import LabeledData
from finequant.data.transforms import image_transform
from finequant.errors import DataError
from finequant.models.base import LoadedModel

MAX_TEXT_TOKENS = 512  # at most; the tokenizer's own limit when lower


def to_rgb(item: Any) -> Image.Image:
    """A file path or a uint8 array (HxW or HxWxC) as an RGB PIL image (grayscale -> 3 channels)."""
    if isinstance(item, (str, Path)):
        try:
            with Image.open(item) as im:
                return im.convert("RGB")
        except (OSError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {item}: {e}; run `finequant data inspect` to find bad files") from e
    arr = np.asarray(item)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


class ImageDataset(Dataset):
    def __init__(self, data: LabeledData, transform: Any) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(to_rgb(self.data.items[i])), int(self.data.labels[i])


class TextDataset(Dataset):
    def __init__(self, data: LabeledData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.data.items[i], int(self.data.labels[i])


class TextCollate:
    """Tokenize a batch of (text, label) with dynamic padding, truncating long texts."""

    def __init__(self, tokenizer: Any, max_tokens: int | None = None) -> None:
        # a fine-tuned model's tokenizer carries the limit chosen from its training texts
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens or min(int(tokenizer.model_max_length), MAX_TEXT_TOKENS)

    def __call__(self, batch: list[tuple[str, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        texts, labels = zip(*batch)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return dict(enc), torch.tensor(labels, dtype=torch.long)


def make_dataset(data: LabeledData, loaded: LoadedModel, augment: str = "none") -> Dataset:
    if data.kind != loaded.task:
        raise DataError(f"data {data.source} is {data.kind} but model {loaded.spec} takes {loaded.task}")
    if data.kind == "text":
        return TextDataset(data)
    return ImageDataset(data, image_transform(loaded.preprocess, augment))


def make_loader(data: LabeledData, loaded: LoadedModel, *, batch_size: int = 64, shuffle: bool = False,
                augment: str = "none", seed: int = 0, sampler: Sampler | None = None,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader yielding ``(inputs, labels)``; inputs are a tensor (images) or a dict (texts)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        make_dataset(data, loaded, augment), batch_size=batch_size,
        shuffle=shuffle if sampler is None else False, sampler=sampler, generator=generator,
        collate_fn=TextCollate(loaded.tokenizer) if data.kind == "text" else None,
        num_workers=num_workers,
    )
