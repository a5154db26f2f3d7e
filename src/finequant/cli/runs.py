"""What a saved run folder tells later commands: its model, its data spec and the exact splits it used."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finequant.data import Splits, load_data, stratified_split
from finequant.errors import SpecError
from finequant.models import LoadedModel, load_artifact, load_model
from finequant.summary import SUMMARY


def run_config(path: Path) -> dict[str, Any]:
    """The config recorded by finetune (or quantize, followed to its source run) next to a saved model."""
    for candidate in (path, path.parent):
        if (candidate / SUMMARY).is_file():
            cfg = json.loads((candidate / SUMMARY).read_text()).get("config") or {}
            if cfg.get("source") and not cfg.get("finetune"):  # a quantize/tune summary: follow its source
                inner = run_config(Path(cfg["source"]))
                return {**inner, "data": cfg.get("data") or inner.get("data")}
            return cfg
    return {}


def resolve_model(source: str) -> tuple[LoadedModel, dict[str, Any]]:
    """A finetune run folder (its model and run config), a model folder, or a model spec."""
    path = Path(source)
    if (path / SUMMARY).is_file() and (path / "model" / "model.json").is_file():
        return load_artifact(path / "model"), run_config(path)
    if (path / "model.json").is_file():
        return load_artifact(path), {}
    return load_model(source), {}


@dataclass
class RunData:
    splits: Splits
    spec: str
    seed: int


def run_data(source: str, loaded: LoadedModel, run: dict[str, Any], data: str | None) -> RunData:
    """The run's data and splits (same seed, fractions, subset), and the model set to its classes and size."""
    spec = data or run.get("data")
    if not spec:
        raise SpecError(f"{source} is not a finetune run folder: pass --data SPEC")
    ft = run.get("finetune") or {}
    seed = ft.get("seed", 0)
    splits = stratified_split(load_data(spec), val_frac=run.get("val_frac", 0.1), test_frac=run.get("test_frac", 0.2),
                              seed=seed, max_samples=run.get("max_samples"))
    if loaded.classes is None or len(loaded.classes) != len(splits.train.classes):
        torch.manual_seed(seed)
        loaded.set_num_classes(len(splits.train.classes), splits.train.classes)
    if loaded.task == "image" and ft.get("image_size"):
        loaded.preprocess = loaded.preprocess.with_size(ft["image_size"])
    return RunData(splits, spec, seed)
