"""``finequant demo``: the main job on the bundled assets, end to end, with per-step times.

vision: ImageNet EfficientNet-Lite0 -> mnist5k: lp-ft at 64 px, static int8 (per-channel W8A8),
accuracy-aware tuning for the fastest int8 model within 0.5 pt, ONNX Runtime evaluation of the real
int8 models, latency fp32 vs int8 on ONNX Runtime.
text: MiniLM -> Rotten Tomatoes subset: linear probe, dynamic int8 (run on ONNX Runtime's integer
MatMuls) and fp16 (simulated accuracy).
Ends with one table and a report (report.html + report.md) in the run folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from finequant.cli.deploy import evaluate_runner
from finequant.cli.finetune import run_finetune
from finequant.cli.quantize import run_quantize
from finequant.cli.tune import tune_command
from finequant.quant import QuantConfig
from finequant.runtime.backends import example_input, open_runner, to_numpy
from finequant.runtime.bench import measure_side_by_side
from finequant.report import write_report
from finequant.summary import read_summary, write_summary
from finequant.train import FinetuneConfig

console = Console()

DEMOS: dict[str, dict[str, Any]] = {
    "vision": dict(model="efficientnet_lite0", data="mnist5k", max_samples=None,
                   cfg=FinetuneConfig(strategy="lp-ft", epochs=3, lp_epochs=1, image_size=64, lr=3e-3,
                                      freeze_bn_stats=True),
                   quant={"int8 static": QuantConfig()}),
    "text": dict(model="minilm", data="rotten_tomatoes", max_samples=2000,
                 cfg=FinetuneConfig(strategy="last-layer", epochs=8, lr=1e-2, batch_size=32),
                 quant={"int8 dynamic": QuantConfig(method="dynamic"), "fp16": QuantConfig(method="fp16")}),
}


class _Steps:
    """Times each step and prints it as it ends."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times[name] = time.perf_counter() - t0
        console.print(f"[dim]step[/] {name}: {self.times[name]:.1f} s")
        return out


def _demo_one(name: str, out: Path, steps: _Steps) -> list[dict[str, Any]]:
    d = DEMOS[name]
    console.rule(f"{name}: {d['model']} -> {d['data']}")
    run_dir = out / name / "finetune"
    ft = steps.run(f"{name}: fine-tune ({d['cfg'].strategy})", run_finetune, d["model"], d["data"], d["cfg"], run_dir,
                   max_samples=d["max_samples"])
    fp32_bytes = (run_dir / "model" / "model.safetensors").stat().st_size
    rows = [{"variant": f"{name} fp32", "accuracy": ft.metrics["test"]["accuracy"], "size_bytes": fp32_bytes,
             "backend": "torch", "path": str(run_dir)}]
    for label, qcfg in d["quant"].items():
        qdir = out / name / label.replace(" ", "-")
        q = steps.run(f"{name}: quantize {label}", run_quantize, str(run_dir), qcfg, qdir)
        rows.append({"variant": f"{name} {label}", "accuracy": q["metrics"]["quantized"]["accuracy"],
                     "size_bytes": q["sizes"]["artifact_bytes"], "backend": "torch-sim", "path": str(qdir)})
    if name == "vision":  # the fastest int8 model within 0.5 pt
        tdir = out / name / "tune"
        steps.run("vision: tune (latency, within 0.5 pt)", tune_command, source=str(run_dir), out=tdir, max_drop=0.5,
                  relative=False, objective="latency", backend="onnxruntime", method="static", budget_trials=4,
                  bits="4,8", sensitivity_only=False, leave_one_out_=False, calib=8, data=None)
        tuned = read_summary(tdir)["metrics"]
        rows.append({"variant": f"{name} tuned ({tuned['chosen']})", "accuracy": tuned["test"]["quantized"]["accuracy"],
                     "size_bytes": (tdir / "quant.safetensors").stat().st_size, "backend": "torch-sim",
                     "path": str(tdir)})
    # the int8 models on real integer kernels (fp16 stays in PyTorch), and their speed against fp32
    on_ort = [r for r in rows if not r["variant"].endswith("fp16")]
    for row in on_ort[1:]:
        m = steps.run(f"{name}: eval {row['variant']} on onnxruntime", evaluate_runner, Path(row["path"]),
                      "onnxruntime", None, None)
        row.update(accuracy=m["accuracy"], backend="onnxruntime")
    runners = {r["variant"]: open_runner(r["path"], "onnxruntime") for r in on_ort}
    x = to_numpy(example_input(runners[rows[0]["variant"]].info["loaded"], 1))
    timed = steps.run(f"{name}: bench fp32 vs int8 (onnxruntime, batch 1)", measure_side_by_side, runners, x,
                      rounds=50)
    base = timed[rows[0]["variant"]]["p50_ms"]
    for r in on_ort:
        r.update(latency_ms=timed[r["variant"]]["p50_ms"], speedup=base / timed[r["variant"]]["p50_ms"],
                 backend="onnxruntime")
    return rows


def demo_command(
    which: str = typer.Argument("all", help="vision, text or all."),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder (one sub-folder per step)."),
) -> None:
    """Fine-tune the bundled models on the bundled data, quantize them, run int8 on ONNX Runtime,
    and print one table (accuracy, size, latency, speed-up per variant)."""
    names = list(DEMOS) if which == "all" else [which]
    if any(n not in DEMOS for n in names):
        raise typer.BadParameter(f"{which!r}: choose vision, text or all")
    steps, rows = _Steps(), []
    for name in names:
        rows += _demo_one(name, out, steps)
    table = Table(title="finequant demo (test split)")
    for col in ("variant", "backend", "test acc", "size MB", "latency ms (b1)", "speed-up"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["variant"], r["backend"], f"{r['accuracy']:.4f}", f"{r['size_bytes'] / 1e6:.2f}",
                      f"{r['latency_ms']:.2f}" if "latency_ms" in r else "-",
                      f"{r['speedup']:.2f}x" if "speedup" in r else "-")
    console.print(table)
    write_summary(out, "demo", config={"which": which}, metrics={"variants": rows}, timings=steps.times)
    report = steps.run("report", write_report, [out], out / "report.html")
    console.print(f"total {sum(steps.times.values()):.0f} s; summary: {out / 'summary.json'}; "
                  f"report: {report['html']}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
