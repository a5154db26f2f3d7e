"""``finequant run pipeline.yaml`` and ``finequant demo``: the whole chain in one command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def run_command(pipeline: Path = typer.Argument(..., help="Pipeline YAML (see examples/).")) -> None:
    """Run a YAML pipeline: finetune -> quantize/tune -> export -> bench -> report, resuming finished steps."""
    from finequant.pipeline import load_pipeline, run_pipeline

    result = run_pipeline(load_pipeline(pipeline))
    done = ", ".join(f"{k} {v:.0f} s" for k, v in result["times"].items()) or "nothing (all steps unchanged)"
    console.print(f"ran: {done}; report: {Path(result['out']) / 'report.html'}")


def demo_command(
    which: str = typer.Argument("all", help="vision, text or all."),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder (one sub-folder per step)."),
) -> None:
    """Fine-tune the bundled models on the bundled data, quantize them, run int8 on ONNX Runtime,
    and print one table (accuracy, size, latency, speed-up per variant)."""
    from finequant.demo import run_demo

    result = run_demo(which, out, report=lambda m: console.print(f"[dim]{m}[/]"))
    table = Table(title="finequant demo (test split)")
    for col in ("variant", "backend", "test acc", "size MB", "latency ms (b1)", "speed-up"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(r["variant"], r["backend"], f"{r['accuracy']:.4f}", f"{r['size_bytes'] / 1e6:.2f}",
                      f"{r['latency_ms']:.2f}" if "latency_ms" in r else "-",
                      f"{r['speedup']:.2f}x" if "speedup" in r else "-")
    console.print(table)
    console.print(f"total {sum(result['times'].values()):.0f} s; summary: {result['summary']}; "
                  f"report: {result['report']}")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("demo")(demo_command)
