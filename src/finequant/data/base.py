"""Labelled data in memory, and deterministic stratified splits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from finequant.errors import DataError

Kind = Literal["image", "text"]
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}


def combine(parts: dict[str, LabeledData], source: str) -> LabeledData:
    """One data set from given splits (``{"train": ..., "test": ...}``), classes matched by name."""
    classes = sorted({c for d in parts.values() for c in d.classes})
    kinds = {d.kind for d in parts.values()}
    if len(kinds) > 1:
        raise DataError(f"{source}: the splits mix {sorted(kinds)} data")
    items, labels, split, warnings = [], [], [], []
    for name, d in parts.items():
        items += list(d.items)
        labels += [classes.index(d.classes[y]) for y in d.labels]
        split += [name] * len(d)
        warnings += d.warnings
    return LabeledData(kinds.pop(), items, np.array(labels), classes, source, warnings, np.array(split, dtype=object))


def align_classes(data: LabeledData, classes: list[str]) -> LabeledData:
    """``data`` with labels renumbered to ``classes`` (a model's), matched by name."""
    if list(data.classes) == list(classes):
        return data
    unknown = sorted(set(data.classes) - set(classes))
    if unknown:
        raise DataError(f"{data.source}: class(es) {unknown} are not among the model's classes {classes}")
    index = np.array([classes.index(c) for c in data.classes], dtype=np.int64)
    return replace(data, labels=index[data.labels], classes=list(classes))


@dataclass
class LabeledData:
    """Items (image paths, uint8 image arrays or texts) with integer labels into ``classes``."""

    kind: Kind
    items: list[Any]
    labels: np.ndarray
    classes: list[str]
    source: str
    warnings: list[str] = field(default_factory=list)
    split: np.ndarray | None = None
    """The split each item belongs to (train/val/test) when the data set comes split; used as given."""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.items) != len(self.labels):
            raise DataError(f"{self.source}: {len(self.items)} items but {len(self.labels)} labels")
        if self.split is not None:
            self.split = np.asarray(self.split, dtype=object)
            bad = sorted(set(self.split) - set(SPLITS))
            if bad or len(self.split) != len(self.labels):
                raise DataError(f"{self.source}: split names {bad} (expected {', '.join(SPLITS)})")

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, index: np.ndarray | list[int]) -> LabeledData:
        index = np.asarray(index, dtype=np.int64)
        return replace(self, items=[self.items[i] for i in index], labels=self.labels[index], warnings=[],
                       split=None if self.split is None else self.split[index])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


@dataclass
class Splits:
    train: LabeledData
    val: LabeledData
    test: LabeledData
    skipped: list[str] = field(default_factory=list)
    """Inputs skipped while loading (unreadable files, decompression bombs, empty rows), one line each."""

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
    if data.split is not None:
        return _given_splits(data, val_frac=val_frac, seed=seed, max_samples=max_samples)
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
    return Splits(**{k: data.subset(np.sort(v)) for k, v in parts.items()}, skipped=list(data.warnings))


def load_splits(data: str, *, test_data: str | None = None, val_frac: float = 0.1, test_frac: float = 0.2,
                seed: int = 0, max_samples: int | None = None, strict: bool = False) -> Splits:
    """The train/val/test splits of a data spec: the ones it comes with (``train/``, ``val/``, ``test/``
    folders; a csv ``split=`` column), or ``test_data`` as the test split, or a seeded stratified split."""
    from finequant.data.sources import load_data

    pool = load_data(data, strict=strict)
    if test_data:
        if pool.split is not None:
            raise DataError(f"{data} already comes with its own splits; drop the separate test data")
        test = load_data(test_data, strict=strict)
        pool = combine({"train": pool, "test": test}, f"{data} + test {test_data}")
    return stratified_split(pool, val_frac=val_frac, test_frac=test_frac, seed=seed, max_samples=max_samples)


def _given_splits(data: LabeledData, *, val_frac: float, seed: int, max_samples: int | None) -> Splits:
    """The splits a data set came with, as given; a missing validation split is carved from train."""
    if max_samples is not None:
        raise DataError(f"{data.source} comes split into {sorted(set(data.split))}; max_samples would re-split "
                        "it: drop max_samples (the given splits are used as they are)")
    where = {name: np.flatnonzero(data.split == name) for name in SPLITS}
    if not len(where["train"]) or not len(where["test"]):
        raise DataError(f"{data.source}: a given split needs train and test parts (found "
                        f"{sorted(n for n, w in where.items() if len(w))}); add them, or pass unsplit data")
    train = data.subset(where["train"])
    if not len(where["val"]):
        inner = stratified_split(replace(train, split=None), val_frac=0.0, test_frac=max(val_frac, 0.05), seed=seed)
        return Splits(train=inner.train, val=inner.test, test=data.subset(where["test"]), skipped=list(data.warnings))
    return Splits(train=train, val=data.subset(where["val"]), test=data.subset(where["test"]),
                  skipped=list(data.warnings))
