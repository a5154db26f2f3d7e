"""``finequant export``, ``eval`` and ``bench``: run saved models on real backends and measure them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from finequant.catalog import BACKENDS, EXPORTERS
from finequant.errors import ConfigError

console = Console()


def eval_command(
    path: Path = typer.Argument(..., help="Run, model or quantize output folder."),
    backend: str = typer.Option("onnxruntime", help=f"One of: {BACKENDS.choices()}."),
    data: str = typer.Option(None, help="Data spec (default: the run's test split; else all of this data)."),
    threads: int = typer.Option(None, min=1, help="Intra-op threads (default: the runtime's)."),
    trust_remote_code: bool = typer.Option(False, help="Allow a model folder's own code (model.py, HF custom code)."),
    out: Path = typer.Option(None, "--out", help="Also write summary.json here."),
) -> None:
    """Accuracy of a saved model on a backend: a run's own test split, or all of --data."""
    from finequant.summary import write_summary
    from finequant.workflow import evaluate_run

    m = evaluate_run(path, backend, data=data, threads=threads, trust_remote_code=trust_remote_code)
    check = f"; matches the simulation (cosine {m['simulation_cosine']:.4f})" if "simulation_cosine" in m else ""
    console.print(f"{path} on {backend}: test accuracy [bold]{m['accuracy']:.4f}[/], macro-F1 {m['macro_f1']:.4f} "
                  f"({m['samples']} samples: {m['split']} of {m['data']}){check}")
    if out:
        write_summary(out, "eval", config={"path": str(path.resolve()), "backend": backend, "data": m["data"]},
                      metrics=m)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"--batch {text!r}: expected comma-separated positive integers such as 1,16")
    return values


def bench_command(
    paths: list[Path] = typer.Argument(..., help="Run, model or quantize output folders."),
    backend: list[str] = typer.Option(["onnxruntime"], help=f"Repeatable: {BACKENDS.choices()}."),
    batch: str = typer.Option("1,16", help="Comma-separated batch sizes."),
    threads: int = typer.Option(None, min=1, help="Intra-op threads (default: the runtime's)."),
    out: Path = typer.Option(None, "--out", help="Also write summary.json here."),
) -> None:
    """Latency p50/p90, throughput, file size and peak RSS per model, backend and batch; all contenders
    are timed side by side in alternating blocks, so machine drift hits them alike."""
    from finequant.summary import write_summary
    from finequant.workflow import bench_runs

    for b in backend:
        if b not in BACKENDS:
            raise ConfigError(f"--backend: {BACKENDS.unknown_message(b)}")
    rows = bench_runs(paths, backend, _int_list(batch), threads)
    table = Table(title="finequant bench (alternating timing)")
    for col in ("model", "backend", "batch", "p50 ms", "p90 ms", "samples/s", "file MB", "peak RSS MB"):
        table.add_column(col, justify="right")
    for r in rows:
        if "skipped" in r:
            console.print(f"[yellow]skipped[/] {r['model']} on {r['backend']}: {r['skipped']}", highlight=False)
            continue
        table.add_row(Path(r["model"]).name, r["backend"], str(r["batch"]), f"{r['p50_ms']:.2f}",
                      f"{r['p90_ms']:.2f}", f"{r['throughput_per_s']:.1f}",
                      "-" if r["file_bytes"] is None else f"{r['file_bytes'] / 1e6:.2f}", f"{r['peak_rss_mb']:.0f}")
    console.print(table)
    if out:
        write_summary(out, "bench", config={"paths": paths, "backends": backend, "batch": batch, "threads": threads},
                      metrics={"rows": rows})


def export_command(
    path: Path = typer.Argument(..., help="Run, model or quantize output folder."),
    out: Path = typer.Option(..., "--out", "-o", help="File to write (.onnx or .pt2)."),
    format: str = typer.Option("onnx", help=f"onnx (the model's own ONNX form) or one of: {EXPORTERS.choices()}."),
) -> None:
    """Export a saved model and verify the file by loading it back and comparing outputs; a file that
    disagrees is not written."""
    from finequant.workflow import export_run

    r = export_run(path, out, format)
    console.print(f"wrote {out} ({r['bytes'] / 1e6:.2f} MB, {r['format']}); reloaded output vs PyTorch: cosine "
                  f"{r['cosine']:.6f}, top-1 agreement {r['top1_agreement']:.2f}, max |diff| {r['max_abs_diff']:.2e}")
    if "int8_compute_share" in r:
        sim = r["simulation"]
        console.print(f"{r['int8_layers']} layers in int8 ({r['int8_compute_share']:.0%} of the multiply-adds), "
                      f"{len(r['float_layers'])} float; file size x{r['size_vs_fp32_weights']:.3f} of the fp32 "
                      f"weights; the simulation explains {sim['explained']:.1%} of what int8 changes "
                      f"(error vs simulation {sim['sim_rel_error']:.4f}, vs float {sim['int8_rel_error']:.4f})")
    for name, how in r["layers"].items():
        if "float" in how or "not" in how:
            console.print(f"[yellow]{name}:[/] {how}", highlight=False)
    for warning in r["warnings"]:
        console.print(f"[bold red]warning:[/] {warning}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command("eval")(eval_command)
    app.command("bench")(bench_command)
