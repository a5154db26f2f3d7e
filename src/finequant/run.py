"""``Run``: a run folder (finetune, quantize, tune output) and what it tells later steps.

A finetune run records the model and data specs and the exact split settings; quantize and tune runs
record their source run (an absolute path and the SHA-256 of its weights). ``Run.open(path).splits()``
rebuilds the very splits the fine-tune used, so later steps evaluate on its test split wherever they
are started from; a source that moved or changed since is an error, never a silent other split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finequant.errors import ModelError, SpecError
from finequant.io import file_digest
from finequant.summary import SUMMARY

WEIGHT_FILES = ("model.safetensors", "quant.safetensors")


@dataclass
class Run:
    path: Path
    summary: dict[str, Any]
    _seen: tuple[Path, ...] = field(default=(), repr=False, compare=False)
    _source: list[Run | None] = field(default_factory=list, repr=False, compare=False)  # checked once, then kept

    @classmethod
    def open(cls, path: str | Path, _seen: tuple[Path, ...] = ()) -> Run:
        path = Path(path).resolve()
        file = path / SUMMARY
        if not file.is_file():
            raise ModelError(f"{path} is not a finequant run folder ({SUMMARY} is missing)")
        try:
            summary = json.loads(file.read_text())
            if not isinstance(summary, dict) or not isinstance(summary.get("config") or {}, dict):
                raise ValueError("expected an object with a 'config' object")
        except (OSError, ValueError) as e:
            raise ModelError(f"{file} is damaged ({e}); rerun the step that wrote it") from e
        if path in _seen:
            raise ModelError(f"{file}: its source chain loops back to {path}; rerun the step that wrote it")
        return cls(path, summary, (*_seen, path))

    @property
    def command(self) -> str:
        return str(self.summary.get("command", ""))

    @property
    def config(self) -> dict[str, Any]:
        return self.summary.get("config") or {}

    def source(self) -> Run | None:
        """The run this one was made from (quantize/tune -> finetune), or None for a model spec.
        Raises when the recorded source run is gone or its weights changed since (hashed once per Run)."""
        if not self._source:
            self._source.append(self._open_source())
        return self._source[0]

    def _open_source(self) -> Run | None:
        src = self.config.get("source")
        if not src or not isinstance(src, str):
            return None
        recorded = self.config.get("source_sha256")
        if not (Path(src) / SUMMARY).is_file():
            if recorded and not Path(src).is_dir():
                raise ModelError(f"{self.path}: its source run {src} (weights sha256 {recorded}) is gone; move it "
                                 "back there, or pass data=SPEC (--data) to judge this model on other data")
            return None  # a model folder or spec, not a run
        run = Run.open(src, self._seen)
        if recorded and (now := run.weights_digest()) != recorded:
            raise ModelError(f"{self.path}: its source run {src} changed since (weights sha256 {recorded}, now "
                             f"{now}); rerun this step on it, or pass data=SPEC (--data) to judge on other data")
        return run

    def weights_digest(self) -> str | None:
        """SHA-256 (16 hex digits) of this run's weights file, or None if it has none."""
        return weights_file_digest(self.model_folder())

    def origin(self) -> Run:
        """The finetune run at the start of the source chain (or this run)."""
        run = self
        while "finetune" not in run.config and (src := run.source()) is not None:
            run = src
        return run

    def data_spec(self, override: str | None = None) -> str:
        spec = override or self.config.get("data") or self.origin().config.get("data")
        if not spec or not isinstance(spec, str):
            raise SpecError(f"{self.path} records no data set: pass data=SPEC (--data)")
        return spec

    def seed(self) -> int:
        return int((self.origin().config.get("finetune") or {}).get("seed", 0))

    def splits(self, data: str | None = None) -> Any:
        """The exact train/val/test splits the fine-tune used (same spec, seed, fractions, subset)."""
        from finequant.data import load_splits

        ft = self.origin().config
        return load_splits(self.data_spec(data), test_data=None if data else ft.get("test_data"),
                           val_frac=ft.get("val_frac", 0.1), test_frac=ft.get("test_frac", 0.2), seed=self.seed(),
                           max_samples=ft.get("max_samples"))

    def model_folder(self) -> Path:
        """Where the model lives: ``RUN/model`` for a finetune run, the folder itself for quantize/tune."""
        return self.path / "model" if (self.path / "model" / "model.json").is_file() else self.path


def weights_file_digest(folder: Path) -> str | None:
    """SHA-256 (16 hex digits) of the weights file in a model folder (float or quantized), or None."""
    file = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    return file_digest(file) if file else None
