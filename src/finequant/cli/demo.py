"""``finequant demo``: the main job on the bundled assets, end to end, with per-step times.

vision: ImageNet EfficientNet-Lite0 -> mnist5k (lp-ft at 64 px); text: MiniLM -> Rotten Tomatoes
(linear probe on cached sentence embeddings). Quantization, export and benchmarks join as they land.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from finequant.cli.finetune import run_finetune
from finequant.summary import write_summary
from finequant.train import FinetuneConfig

console = Console()

DEMOS = {
    "vision": dict(model="efficientnet_lite0", data="mnist5k", max_samples=None,
                   cfg=FinetuneConfig(strategy="lp-ft", epochs=3, lp_epochs=1, image_size=64, lr=3e-3,
                                      freeze_bn_stats=True)),
    "text": dict(model="minilm", data="rotten_tomatoes", max_samples=2000,
                 cfg=FinetuneConfig(strategy="last-layer", epochs=8, lr=1e-2, batch_size=32)),
}


def demo_command(
    which: str = typer.Argument("all", help="vision, text or all."),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder (one sub-folder per demo)."),
) -> None:
    """Fine-tune the bundled models on the bundled data and print one results table."""
    names = list(DEMOS) if which == "all" else [which]
    if any(n not in DEMOS for n in names):
        raise typer.BadParameter(f"{which!r}: choose vision, text or all")
    table = Table(title="finequant demo")
    for col in ("variant", "test acc", "macro-F1", "size MB", "step time s"):
        table.add_column(col, justify="right")
    rows = {}
    for name in names:
        d = DEMOS[name]
        console.rule(f"{name}: {d['model']} -> {d['data']} [{d['cfg'].strategy}]")
        t0 = time.perf_counter()
        result = run_finetune(d["model"], d["data"], d["cfg"], out / name, max_samples=d["max_samples"])
        seconds = time.perf_counter() - t0
        size = (out / name / "model" / "model.safetensors").stat().st_size / 1e6
        test = result.metrics["test"]
        rows[name] = {"model": d["model"], "data": d["data"], "strategy": d["cfg"].strategy,
                      "test_accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "size_mb": size,
                      "seconds": seconds, "run": str(out / name)}
        console.print(f"{name}: fine-tune step {seconds:.1f} s")
        table.add_row(f"{name} fp32 ({d['cfg'].strategy})", f"{test['accuracy']:.4f}", f"{test['macro_f1']:.4f}",
                      f"{size:.2f}", f"{seconds:.1f}")
    console.print(table)
    write_summary(out, "demo", config={"which": which}, metrics=rows,
                  timings={n: r["seconds"] for n, r in rows.items()})
    console.print(f"summary: {out / 'summary.json'}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
