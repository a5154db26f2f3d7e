"""``finequant report``: one self-contained HTML file (plots embedded) and report.md from run folders."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def report_command(
    runs: list[Path] = typer.Argument(..., help="Run folders (finetune, quantize, tune, bench, demo, run)."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file; report.md goes next to it."),
) -> None:
    """Accuracy vs latency and vs size (Pareto), training curves, confusion matrix, sensitivity,
    tuning trials, environment and every variant's config."""
    from finequant.reporting import write_report

    r = write_report(runs, out)
    console.print(f"report: {r['html']} ({r['variants']} variants, {r['images']} plots); markdown: {r['markdown']}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
