"""``finequant export``, ``eval`` and ``bench``: run saved models on real backends and measure them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from finequant.cli.runs import run_config, run_data
from finequant.data import make_loader
from finequant.errors import ConfigError, FinequantError
from finequant.models.base import forward
from finequant.runtime.backends import BACKENDS, Saved, example_input, export_onnx, open_runner, to_numpy
from finequant.runtime.bench import measure
from finequant.summary import write_summary
from finequant.train.metrics import confusion, metrics_from_confusion

console = Console()


def evaluate_runner(path: Path, backend: str, data: str | None, threads: int | None, batch_size: int = 64
                    ) -> dict[str, Any]:
    runner = open_runner(path, backend, threads)
    loaded = runner.info["loaded"]
    rd = run_data(str(path), loaded, run_config(path), data)
    splits, spec = rd.splits, rd.spec
    n = len(splits.train.classes)
    cm = torch.zeros(n, n, dtype=torch.long)
    for x, y in make_loader(splits.test, loaded, batch_size=batch_size):
        cm += confusion(torch.from_numpy(runner.predict(to_numpy(x))).argmax(1), y, n)
    return {"data": spec, "backend": backend, "samples": int(cm.sum()), **metrics_from_confusion(cm)}


def eval_command(
    path: Path = typer.Argument(..., help="Run, model or quantize output folder."),
    backend: str = typer.Option("onnxruntime", help=f"One of: {', '.join(BACKENDS.names())}."),
    data: str = typer.Option(None, help="Data spec (default: the one the model was trained on)."),
    threads: int = typer.Option(None, help="Intra-op threads (default: the runtime's)."),
    out: Path = typer.Option(None, "--out", help="Also write summary.json here."),
) -> None:
    """Test-split accuracy of a saved model on a backend (the same split the run used)."""
    m = evaluate_runner(path, backend, data, threads)
    console.print(f"{path} on {backend}: test accuracy [bold]{m['accuracy']:.4f}[/], macro-F1 {m['macro_f1']:.4f} "
                  f"({m['samples']} samples of {m['data']})")
    if out:
        write_summary(out, "eval", config={"path": path, "backend": backend, "data": m["data"]}, metrics=m)


def bench_paths(paths: list[Path], backends: list[str], batches: list[int], threads: int | None
                ) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        for backend in backends:
            try:
                runner = open_runner(path, backend, threads)
            except FinequantError as e:  # e.g. an int8 model on the eager torch backend: say so, go on
                rows.append({"model": str(path), "backend": backend, "skipped": str(e)})
                continue
            for b in batches:
                x = to_numpy(example_input(runner.info["loaded"], b))
                rows.append({"model": str(path), "backend": backend, "file_bytes": runner.file_bytes,
                             **measure(runner, x)})
    return rows


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--batch {text!r}: expected comma-separated integers such as 1,16") from None


def bench_command(
    paths: list[Path] = typer.Argument(..., help="Run, model or quantize output folders."),
    backend: list[str] = typer.Option(["onnxruntime"], help=f"Repeatable: {', '.join(BACKENDS.names())}."),
    batch: str = typer.Option("1,16", help="Comma-separated batch sizes."),
    threads: int = typer.Option(None, help="Intra-op threads (default: the runtime's)."),
    out: Path = typer.Option(None, "--out", help="Also write summary.json here."),
) -> None:
    """Latency p50/p90, throughput, model file size and peak RSS, with warm-up, per backend and batch."""
    rows = bench_paths(paths, backend, _int_list(batch), threads)
    table = Table(title="finequant bench")
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
    format: str = typer.Option("onnx", help="onnx (fp32, or QDQ int8 for a static/QAT model) or pt2."),
) -> None:
    """Export a saved model and verify the file by loading it back and comparing outputs."""
    saved = Saved.open(path)
    x = saved.example(4)
    with torch.no_grad():
        reference = forward(saved.loaded.model, x).numpy()
    if format == "onnx":
        from finequant.runtime.ort import run, session

        export_onnx(saved, out)
        got = run(session(out), to_numpy(x))
    elif format == "pt2":
        if isinstance(x, dict):
            raise ConfigError("--format pt2 covers image models; export text models with --format onnx")
        ep = torch.export.export(saved.loaded.model.eval(), (x,))
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(ep, out)
        with torch.no_grad():
            got = torch.export.load(out).module()(x).numpy()
    else:
        raise ConfigError(f"--format {format!r}: allowed values are onnx, pt2")
    cos = float((got * reference).sum() / (np.linalg.norm(got) * np.linalg.norm(reference)))
    agree = float((got.argmax(1) == reference.argmax(1)).mean())
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); reloaded output vs PyTorch: cosine {cos:.6f}, "
                  f"top-1 agreement {agree:.2f}, max |diff| {np.abs(got - reference).max():.2e}")
    if cos < 0.99:
        raise ConfigError(f"exported file disagrees with the PyTorch model (cosine {cos:.4f}); do not ship it")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command("eval")(eval_command)
    app.command("bench")(bench_command)
