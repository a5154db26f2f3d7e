"""Every pipeline step on run folders, as one library call each: what the CLI, the YAML pipeline, the
demo and the benchmarks run. Each reads its inputs through :class:`finequant.run.Run` (so the exact
splits of the fine-tune follow the model), calls the in-memory verb (``finetune``, ``quantize``,
``tune``, ``export``, ``evaluate``, ``bench``) and writes its folder with ``summary.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finequant.data import Splits, align_classes, load_data, load_splits, make_loader, stratified_split
from finequant.errors import SpecError
from finequant.io import atomic_folder, atomic_write_bytes, check_writable, exclusive
from finequant.models import LoadedModel, load_artifact, load_model
from finequant.quant import QATConfig, QuantConfig, quantize
from finequant.quant.artifact import QUANT_WEIGHTS, save_quantized
from finequant.quant.compare import compare_models
from finequant.run import Run, weights_file_digest
from finequant.summary import SUMMARY, write_summary
from finequant.train import FinetuneConfig, FinetuneResult, finetune
from finequant.tuning.api import TuneResult, tune
from finequant.tuning.config import TuneConfig

log = logging.getLogger(__name__)


@dataclass
class Source:
    """A model to quantize or tune, with the data splits it is judged on."""

    loaded: LoadedModel
    splits: Splits
    data: str
    seed: int
    path: str
    sha256: str | None = None  # of the source's weights file (None for a zoo spec)

    def record(self) -> dict[str, Any]:
        """What a run made from this source writes into its summary's config."""
        return {"source": self.path, "source_sha256": self.sha256, "data": self.data, "seed": self.seed}


def open_source(source: str | Path, data: str | None = None, *, trust_remote_code: bool = False) -> Source:
    """A finetune run folder (its model and exact splits), a model folder, or a model spec with ``data``."""
    path = Path(source)
    if (path / SUMMARY).is_file() and (path / "model" / "model.json").is_file():
        run = Run.open(path)
        loaded = load_artifact(run.model_folder(), trust_remote_code=trust_remote_code)
        return Source(loaded, run.splits(data), run.data_spec(data), run.seed(), str(run.path), run.weights_digest())
    if not data:
        raise SpecError(f"{source} is not a finetune run folder: pass data=SPEC (--data) to say what to judge it on")
    digest = None
    if (path / "model.json").is_file():
        loaded, where = load_artifact(path, trust_remote_code=trust_remote_code), str(path.resolve())
        digest = weights_file_digest(path)
    else:
        loaded, where = load_model(str(source), trust_remote_code=trust_remote_code), str(source)
    splits = stratified_split(load_data(data), seed=0)
    if loaded.classes is None or len(loaded.classes) != len(splits.train.classes):
        torch.manual_seed(0)
        loaded.set_num_classes(len(splits.train.classes), splits.train.classes)
    return Source(loaded, splits, data, 0, where, digest)


def finetune_run(model: str, data: str, cfg: FinetuneConfig, out: str | Path, *, resume: bool = False,
                 weights: str | Path | None = None, arch: str | None = None, pretrained: bool = True,
                 trust_remote_code: bool = False, max_samples: int | None = None, val_frac: float = 0.1,
                 test_frac: float = 0.2, strict: bool = False, test_data: str | None = None,
                 keep_checkpoint: bool = False) -> FinetuneResult:
    """Load, split (or take the given splits), fine-tune and write ``OUT/model`` + ``OUT/summary.json``."""
    out = Path(out)
    torch.manual_seed(cfg.seed)  # a new head (or a --no-pretrained body) is initialized reproducibly
    loaded = load_model(model, pretrained=pretrained, weights=weights, arch=arch, trust_remote_code=trust_remote_code)
    splits = load_splits(data, test_data=test_data, val_frac=val_frac, test_frac=test_frac, seed=cfg.seed,
                         max_samples=max_samples, strict=strict)
    main = int(os.environ.get("RANK", "0")) == 0
    with exclusive(out) if main else contextlib.nullcontext():
        result = finetune(loaded, splits, cfg, out_dir=out, resume=resume, keep_checkpoint=keep_checkpoint)
    if main:
        write_summary(out, "finetune",
                      config={"model": model, "data": data, "test_data": test_data, "finetune": result.config,
                              "splits": splits.sizes(),
                              "max_samples": max_samples, "val_frac": val_frac, "test_frac": test_frac,
                              "trust_remote_code": trust_remote_code,
                              "world_size": int(os.environ.get("WORLD_SIZE", "1"))},
                      metrics=result.metrics, sizes={"model_bytes": (out / "model" / "model.safetensors").stat().st_size},
                      timings=result.timings, history=result.history, best_epoch=result.best_epoch,
                      new_keys=loaded.new_keys, artifact=str((out / "model").resolve()), decisions=result.decisions,
                      skipped={"count": len(splits.skipped), "first": splits.skipped[:20]})
    return result


def quantize_run(source: str | Path, qcfg: QuantConfig, out: str | Path, *, data: str | None = None,
                 batch_size: int = 32, qat: QATConfig | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Quantize, compare with float on the test split, and write the artifact and summary.json as one set
    (a killed or failed run leaves an earlier ``out`` whole)."""
    with exclusive(out):
        return _quantize_run(source, qcfg, out, data=data, batch_size=batch_size, qat=qat,
                             trust_remote_code=trust_remote_code)


def _quantize_run(source: str | Path, qcfg: QuantConfig, out: str | Path, *, data: str | None, batch_size: int,
                  qat: QATConfig | None, trust_remote_code: bool) -> dict[str, Any]:
    src = open_source(source, data, trust_remote_code=trust_remote_code)
    check_writable(out, _param_bytes(src.loaded.model))
    calib = make_loader(src.splits.train, src.loaded, batch_size=batch_size, shuffle=True, seed=src.seed)
    t0 = time.perf_counter()
    qm = quantize(src.loaded, qcfg, calib, train_data=src.splits, qat=qat)
    quant_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = compare_models(src.loaded.model, qm.model, make_loader(src.splits.test, src.loaded, batch_size=128),
                             len(src.splits.train.classes))
    eval_s = time.perf_counter() - t0
    float_bytes = _param_bytes(src.loaded.model)
    with atomic_folder(out) as tmp:
        save_quantized(qm, src.loaded, tmp)
        sizes = {"float32_bytes": float_bytes, "packed_weight_bytes": qm.packed_weight_bytes(),
                 "artifact_bytes": (tmp / QUANT_WEIGHTS).stat().st_size}
        sizes["size_ratio"] = sizes["artifact_bytes"] / float_bytes
        write_summary(tmp, "quantize", config={**src.record(), "quantize": qcfg,
                                               "qat": qat if qcfg.info.trained else None},
                      metrics=metrics, sizes=sizes, timings={"quantize_s": quant_s, "eval_s": eval_s},
                      layers=qm.layers, float_layers=qm.float_layers(), folded=qm.folded, ptq=qm.ptq_report)
    return {"metrics": metrics, "sizes": sizes, "float_layers": qm.float_layers(),
            "timings": {"quantize_s": quant_s, "eval_s": eval_s}, "ptq": qm.ptq_report}


def tune_run(source: str | Path, cfg: TuneConfig, out: str | Path, *, data: str | None = None,
             log_fn: Callable[[str], None] = log.info) -> TuneResult:
    """:func:`finequant.tuning.tune` on a run; trials are cached in ``OUT/trials`` (a rerun resumes)."""
    out = Path(out)
    src = open_source(source, data)
    check_writable(out, _param_bytes(src.loaded.model))
    with exclusive(out):
        result = tune(src.loaded, src.splits, cfg, cache_dir=out, log_fn=log_fn)
        _write_tune(result, src, cfg, out)
    return result


def _write_tune(result: TuneResult, src: Source, cfg: TuneConfig, out: Path) -> None:
    if result.sensitivity:
        from finequant.reporting.render import sensitivity_plot

        atomic_write_bytes(out / "sensitivity.png", sensitivity_plot(result.sensitivity))
    if result.quantized is not None:
        save_quantized(result.quantized, src.loaded, out)
    write_summary(out, "tune", config={**src.record(), "tune": cfg},
                  metrics=result.metrics())


def evaluate_run(path: str | Path, backend: str = "onnxruntime", *, data: str | None = None,
                 threads: int | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Test-split accuracy of a saved model on a backend. With a run folder: its fine-tune's test split;
    with ``data`` and no run: all of that data."""
    from finequant.runtime.backends import Deployable
    from finequant.runtime.evaluate import evaluate

    dep = Deployable.open(path, trust_remote_code=trust_remote_code)
    path = Path(path)
    if data:  # the data given, all of it, its classes matched to the model's by name
        test, split, spec = load_data(data), "all samples", data
        if dep.loaded.classes:
            test = align_classes(test, dep.loaded.classes)
    elif (path / SUMMARY).is_file():
        run = Run.open(path)
        test, split, spec = run.splits().test, "test split", run.data_spec()
    else:
        raise SpecError(f"{path} is not a run folder: pass data=SPEC (--data) to evaluate on")
    m = evaluate(dep, test, backend, threads=threads)
    return {"data": spec, "split": split, **m}


def bench_runs(paths: list[str | Path], backends: list[str], batches: list[int],
               threads: int | None = None) -> list[dict[str, Any]]:
    """:func:`finequant.runtime.evaluate.bench` on saved models (alternating timing)."""
    from finequant.runtime.backends import Deployable
    from finequant.runtime.evaluate import bench

    return bench({str(p): Deployable.open(p) for p in paths}, backends, batches, threads=threads)


def export_run(path: str | Path, out: str | Path, format: str = "onnx") -> dict[str, Any]:
    """:func:`finequant.runtime.exporters.export` of a saved model (verified before it is kept)."""
    from finequant.runtime.exporters import export

    check_writable(out, 2 * sum(f.stat().st_size for f in Path(path).glob("*.safetensors")))
    with exclusive(out):
        return export(path, out, format)


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * 4 for p in model.parameters())
