"""``finequant demo``: the main job on the bundled assets, end to end, with per-step times.

vision: ImageNet EfficientNet-Lite0 -> mnist5k: lp-ft at 64 px, static int8 (per-channel W8A8),
accuracy-aware tuning for the fastest int8 model within 0.5 pt, ONNX Runtime evaluation of the real
int8 models, latency fp32 vs int8 on ONNX Runtime.
text: MiniLM -> Rotten Tomatoes subset: linear probe, dynamic int8 (run on ONNX Runtime's integer
MatMuls) and fp16 (simulated accuracy).
Ends with one table and a report (report.html + report.md) in the run folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finequant.quant.config import QuantConfig
from finequant.train.config import FinetuneConfig
from finequant.tuning.config import TuneConfig

log = logging.getLogger(__name__)

DEMOS: dict[str, dict[str, Any]] = {
    "vision": dict(model="efficientnet_lite0", data="mnist5k", max_samples=None,
                   # the recipe behind the README's figures (channels_last, the faster layout, trains a
                   # slightly different model: static int8 on an AVX2 CPU then dropped 1.8 pt, not 1.3)
                   cfg=FinetuneConfig(strategy="lp-ft", epochs=3, lp_epochs=1, image_size=64, lr=3e-3,
                                      freeze_bn_stats=True, channels_last=False),
                   quant={"int8 static": QuantConfig()},
                   tune=TuneConfig(max_drop=0.5, objective="latency", backend="onnxruntime", budget_trials=4)),
    "text": dict(model="minilm", data="rotten_tomatoes", max_samples=2000,
                 cfg=FinetuneConfig(strategy="last-layer", epochs=8, lr=1e-2, batch_size=32),
                 quant={"int8 dynamic": QuantConfig(method="dynamic"), "fp16": QuantConfig(method="fp16")},
                 tune=None),
}


class Steps:
    """Times each step and reports it as it ends."""

    def __init__(self, report: Callable[[str], None] = log.info) -> None:
        self.times: dict[str, float] = {}
        self.report = report

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times[name] = time.perf_counter() - t0
        self.report(f"step {name}: {self.times[name]:.1f} s")
        return out


def demo_one(name: str, out: Path, steps: Steps) -> list[dict[str, Any]]:
    """One demo (vision or text): its variants with test accuracy, size, backend and latency."""
    from finequant.catalog import METHODS
    from finequant.runtime.backends import open_runner, to_numpy
    from finequant.runtime.bench import measure_side_by_side
    from finequant.summary import read_summary
    from finequant.workflow import evaluate_run, finetune_run, quantize_run, tune_run

    d = DEMOS[name]
    run_dir = out / name / "finetune"
    ft = steps.run(f"{name}: fine-tune ({d['cfg'].strategy})", finetune_run, d["model"], d["data"], d["cfg"], run_dir,
                   max_samples=d["max_samples"])
    fp32_bytes = (run_dir / "model" / "model.safetensors").stat().st_size
    rows = [{"variant": f"{name} fp32", "accuracy": ft.metrics["test"]["accuracy"], "size_bytes": fp32_bytes,
             "backend": "torch", "path": str(run_dir), "int8": True}]
    for label, qcfg in d["quant"].items():
        qdir = out / name / label.replace(" ", "-")
        q = steps.run(f"{name}: quantize {label}", quantize_run, str(run_dir), qcfg, qdir)
        rows.append({"variant": f"{name} {label}", "accuracy": q["metrics"]["quantized"]["accuracy"],
                     "size_bytes": q["sizes"]["artifact_bytes"], "backend": "torch-sim", "path": str(qdir),
                     "int8": qcfg.info.exporter is not None, "reduce_range": qcfg.reduce_range})
    if d["tune"] is not None:  # the fastest int8 model within the budget
        tdir = out / name / "tune"
        steps.run(f"{name}: tune ({d['tune'].objective}, within {d['tune'].max_drop} pt)", tune_run, str(run_dir),
                  d["tune"], tdir)
        tuned = read_summary(tdir)["metrics"]
        rows.append({"variant": f"{name} tuned ({tuned['chosen']})", "accuracy": tuned["test"]["quantized"]["accuracy"],
                     "size_bytes": (tdir / "quant.safetensors").stat().st_size, "backend": "torch-sim",
                     "path": str(tdir), "int8": METHODS.info(d["tune"].method).exporter is not None})
    # the int8 models on real integer kernels (fp16 stays in PyTorch), and their speed against fp32
    on_ort = [r for r in rows if r.pop("int8")]
    for row in on_ort[1:]:
        m = steps.run(f"{name}: eval {row['variant']} on onnxruntime", evaluate_run, row["path"], "onnxruntime")
        row.update(accuracy=m["accuracy"], backend="onnxruntime")
    runners = {r["variant"]: open_runner(r["path"], "onnxruntime") for r in on_ort}
    try:
        x = to_numpy(runners[rows[0]["variant"]].info["deployable"].example(1))
        timed = steps.run(f"{name}: bench fp32 vs int8 (onnxruntime, batch 1)", measure_side_by_side, runners, x,
                          rounds=50)
    finally:
        for r in runners.values():
            r.close()
    base = timed[rows[0]["variant"]]["p50_ms"]
    for r in on_ort:
        r.update(latency_ms=timed[r["variant"]]["p50_ms"], speedup=base / timed[r["variant"]]["p50_ms"],
                 backend="onnxruntime")
    return rows


def run_demo(which: str, out: str | Path, report: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run the vision and/or text demo under ``out``; writes summary.json and the report there."""
    from finequant.errors import ConfigError
    from finequant.reporting import write_report
    from finequant.summary import write_summary

    out = Path(out)
    names = list(DEMOS) if which == "all" else [which]
    if any(n not in DEMOS for n in names):
        raise ConfigError(f"demo {which!r}: choose vision, text or all")
    steps, rows = Steps(report), []
    for name in names:
        rows += demo_one(name, out, steps)
    write_summary(out, "demo", config={"which": which}, metrics={"variants": rows}, timings=steps.times)
    written = steps.run("report", write_report, [out], out / "report.html")
    return {"rows": rows, "times": steps.times, "report": written["html"], "summary": str(out / "summary.json")}
