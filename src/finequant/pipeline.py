"""A YAML pipeline: finetune -> quantize and/or tune -> export -> bench -> report (``finequant run``).

Each step writes into its own sub-folder of the run folder, with ``step.json`` holding the hash of
its config and of the steps it depends on. A rerun skips every step whose hash and outputs are
unchanged and recomputes the rest, so editing one quantize variant reruns only that variant and
what reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finequant.catalog import BACKENDS, EXPORTERS
from finequant.configs import from_mapping
from finequant.errors import ConfigError
from finequant.io import atomic_write_text
from finequant.quant.config import QuantConfig
from finequant.train.config import FinetuneConfig
from finequant.tuning.config import TuneConfig

log = logging.getLogger(__name__)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
STEPS = ("finetune", "quantize", "tune", "export", "bench", "report")


@dataclass
class FinetuneStep:
    model: str = "efficientnet_lite0"
    data: str = "mnist5k"
    max_samples: int | None = None
    pretrained: bool = True
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportStep:
    format: str = "onnx"


@dataclass
class BenchStep:
    backends: list[str] = field(default_factory=lambda: ["onnxruntime"])
    batch: list[int] = field(default_factory=lambda: [1])
    threads: int | None = None


@dataclass
class Pipeline:
    out: str = "runs/pipeline"
    finetune: FinetuneStep = field(default_factory=FinetuneStep)
    quantize: dict[str, QuantConfig] = field(default_factory=dict)
    tune: TuneConfig | None = None
    export: ExportStep | None = None
    bench: BenchStep | None = None
    report: bool = True


def _section(d: Any, name: str) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{name}: expected a mapping of settings, got {type(d).__name__}")
    return d


def load_pipeline(path: str | Path) -> Pipeline:
    """Parse and validate a pipeline YAML (``yaml.safe_load``: no Python objects from the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such pipeline file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(('out',) + STEPS)}")
    unknown = set(raw) - {"out", *STEPS}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(('out',) + STEPS)}")
    ft = from_mapping(FinetuneStep, _section(raw.get("finetune"), "finetune"), "finetune")
    FinetuneConfig.from_dict(ft.config)  # validate now, not after an hour of training
    variants = _section(raw.get("quantize"), "quantize")
    for name in variants:
        if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
            raise ConfigError(f"quantize variant name {name!r}: use letters, digits, '.', '_' and '-' only "
                              "(it names a folder inside the pipeline's out)")
    quantize = {str(name): QuantConfig.from_dict(_section(cfg, f"quantize.{name}")) for name, cfg in variants.items()}
    tune = TuneConfig.from_dict(_section(raw["tune"], "tune")) if "tune" in raw else None
    export = from_mapping(ExportStep, _section(raw["export"], "export"), "export") if "export" in raw else None
    if export and export.format not in ("onnx", *EXPORTERS):
        raise ConfigError(f"export.format={export.format!r}: allowed values are onnx, {EXPORTERS.choices()}")
    bench = from_mapping(BenchStep, _section(raw["bench"], "bench"), "bench") if "bench" in raw else None
    for b in bench.backends if bench else []:
        if b not in BACKENDS:
            raise ConfigError(f"bench.backends: {BACKENDS.unknown_message(b)}")
    if not quantize and tune is None:
        raise ConfigError(f"{path}: add a 'quantize' (variants) or 'tune' section; there is nothing to deploy")
    return Pipeline(out=str(raw.get("out", "runs/pipeline")), finetune=ft, quantize=quantize, tune=tune,
                    export=export, bench=bench, report=raw.get("report", True) is not False)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Runner:
    """Runs a step unless its folder holds a finished run of the same config (resume)."""

    def __init__(self, root: Path) -> None:
        self.root, self.times, self.skipped = root, {}, []

    def step(self, name: str, config: Any, fn: Callable[[Path], None], done_file: str = "summary.json") -> str:
        folder = self.root / name
        digest = _hash(config)
        marker = folder / "step.json"
        if marker.is_file() and json.loads(marker.read_text()).get("hash") == digest and (folder / done_file).exists():
            log.info("step %s: unchanged, skipped", name)
            self.skipped.append(name)
            return digest
        t0 = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)  # an interrupted step is never mistaken for a finished one
        fn(folder)
        self.times[name] = time.perf_counter() - t0
        atomic_write_text(marker, json.dumps({"hash": digest, "config": config, "seconds": self.times[name]},
                                             indent=2, default=str))
        log.info("step %s: %.1f s", name, self.times[name])
        return digest


def run_pipeline(p: Pipeline) -> dict[str, Any]:
    """Run every step whose config (or upstream) changed; returns the run folder, step times and skips."""
    from finequant.reporting import write_report
    from finequant.summary import write_summary
    from finequant.workflow import bench_runs, export_run, finetune_run, quantize_run, tune_run

    root = Path(p.out)
    r = _Runner(root)
    ft = asdict(p.finetune)
    h_ft = r.step("finetune", ft, lambda d: finetune_run(
        p.finetune.model, p.finetune.data, FinetuneConfig.from_dict(p.finetune.config), d,
        pretrained=p.finetune.pretrained, max_samples=p.finetune.max_samples))
    run_dir = str(root / "finetune")
    deployables: dict[str, str] = {}
    for name, q in p.quantize.items():
        h = r.step(f"quantize/{name}", {"upstream": h_ft, "quantize": asdict(q)},
                   lambda d, q=q: quantize_run(run_dir, q, d))
        deployables[f"quantize/{name}"] = h
    if p.tune:
        t = p.tune
        deployables["tune"] = r.step("tune", {"upstream": h_ft, "tune": asdict(t)}, lambda d: tune_run(run_dir, t, d))
    if p.export:
        suffix = "pt2" if p.export.format == "pt2" else "onnx"
        for name, h in deployables.items():
            r.step(f"export/{name.replace('/', '-')}", {"upstream": h, "export": asdict(p.export)},
                   lambda d, name=name: export_run(root / name, d / f"model.{suffix}", p.export.format),
                   done_file=f"model.{suffix}")
    if p.bench:
        b = p.bench
        targets = [run_dir, *(str(root / n) for n in deployables)]
        r.step("bench", {"upstream": [h_ft, *deployables.values()], "bench": asdict(b)}, lambda d: write_summary(
            d, "bench", config={"paths": targets, **asdict(b)},
            metrics={"rows": bench_runs(targets, b.backends, b.batch, b.threads)}))
    if p.report:
        write_report([root], root / "report.html")
    return {"out": str(root), "times": r.times, "skipped": r.skipped}
