"""Labelled data in memory, and deterministic stratified splits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from finequant.errors import DataError

Kind = Literal["image", "text"]


@dataclass
class LabeledData:
    """Items (image paths, uint8 image arrays or texts) with integer labels into ``classes``."""

    kind: Kind
    items: list[Any]
    labels: np.ndarray
    classes: list[str]
    source: str
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.items) != len(self.labels):
            raise DataError(f"{self.source}: {len(self.items)} items but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, index: np.ndarray | list[int]) -> LabeledData:
        index = np.asarray(index, dtype=np.int64)
        return replace(self, items=[self.items[i] for i in index], labels=self.labels[index], warnings=[])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


@dataclass
class Splits:
    train: LabeledData
    val: LabeledData
    test: LabeledData

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def check_trainable(data: LabeledData) -> None:
    """Fail early, naming the class, when the data cannot train a classifier."""
    if len(data) == 0:
        raise DataError(f"{data.source}: no usable samples")
    counts = data.class_counts()
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"{data.source}: class(es) {empty} have no samples; add samples or remove the class")
    if len(data.classes) < 2:
        raise DataError(f"{data.source}: only one class ({data.classes}); a classifier needs at least two")


def stratified_split(data: LabeledData, *, val_frac: float = 0.1, test_frac: float = 0.2,
                     seed: int = 0, max_samples: int | None = None) -> Splits:
    """Split per class with a seeded permutation, so each split keeps the class proportions.

    ``max_samples`` first takes a stratified subset (for quick runs on a large corpus).
    """
    if not (0 <= val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise DataError(f"val_frac={val_frac} and test_frac={test_frac} must be in [0, 1) with sum < 1")
    check_trainable(data)
    rng = np.random.default_rng(seed)
    keep_frac = 1.0 if max_samples is None else min(1.0, max_samples / len(data))
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c, name in enumerate(data.classes):
        idx = rng.permutation(np.flatnonzero(data.labels == c))
        idx = idx[: max(3, round(len(idx) * keep_frac))]
        n_test, n_val = max(1, round(len(idx) * test_frac)), round(len(idx) * val_frac)
        if val_frac > 0:
            n_val = max(1, n_val)
        if len(idx) - n_test - n_val < 1:
            raise DataError(f"{data.source}: class '{name}' has {len(idx)} samples, too few to split into "
                            "train/val/test; add samples or lower --val-frac/--test-frac")
        parts["test"] += idx[:n_test].tolist()
        parts["val"] += idx[n_test:n_test + n_val].tolist()
        parts["train"] += idx[n_test + n_val:].tolist()
    return Splits(**{k: data.subset(np.sort(v)) for k, v in parts.items()})
