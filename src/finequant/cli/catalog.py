"""``finequant list``, ``models`` and ``data list|inspect``: what finequant offers and what a data set holds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from finequant import catalog

console = Console()
data_app = typer.Typer(help="List data sources or inspect a data set.", no_args_is_help=True)


def models(out: Path = typer.Option(None, "--out", help="Also write summary.json here.")) -> None:
    """List model sources (spec prefixes) and the bundled pretrained models."""
    from finequant.models import BUNDLED_MODELS, MODEL_SOURCES
    from finequant.summary import write_summary

    table = Table(title="model sources")
    table.add_column("spec")
    table.add_column("what")
    rows = [(f"{n}:...", MODEL_SOURCES.help(n)) for n in MODEL_SOURCES]
    rows += [(n, "bundled: " + BUNDLED_MODELS.help(n)) for n in BUNDLED_MODELS]
    for spec, what in rows:
        table.add_row(spec, what)
    console.print(table)
    if out:
        write_summary(out, "models", metrics={"sources": dict(rows)})


@data_app.command("list")
def data_list() -> None:
    """List data sources (spec prefixes and bundled data sets)."""
    from finequant.data import DATA_SOURCES

    table = Table(title="data sources")
    table.add_column("spec")
    table.add_column("what")
    for n in DATA_SOURCES:
        table.add_row(n, DATA_SOURCES.help(n))
    console.print(table)


@data_app.command("inspect")
def data_inspect(
    spec: str = typer.Argument(..., help="Data spec, e.g. mnist5k or imagefolder:PATH."),
    out: Path = typer.Option(None, "--out", help="Also write summary.json here."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first unreadable file or bad row."),
) -> None:
    """Print class counts and flag problems: empty class, unreadable or duplicate files, imbalance."""
    from finequant.data import inspect_data, load_data
    from finequant.summary import write_summary

    report = inspect_data(load_data(spec, strict=strict))
    table = Table(title=f"{spec}: {report['samples']} {report['kind']} samples, {report['classes']} classes")
    table.add_column("class")
    table.add_column("samples", justify="right")
    for c, n in report["class_counts"].items():
        table.add_row(c, str(n))
    console.print(table)
    for p in report["problems"]:
        console.print(f"[yellow]problem:[/] {p}", highlight=False)
    if not report["problems"]:
        console.print("[green]no problems found[/]")
    if out:
        write_summary(out, "data inspect", config={"spec": spec, "strict": strict}, metrics=report)


REGISTRIES = {"methods": catalog.METHODS, "observers": catalog.OBSERVERS, "ptq": catalog.PTQ_STEPS,
              "strategies": catalog.STRATEGIES, "backends": catalog.BACKENDS, "exporters": catalog.EXPORTERS}


def list_command(what: str = typer.Argument(..., help=f"One of: {', '.join(REGISTRIES)}.")) -> None:
    """List a registry's entries with what each one does and needs (methods: calibration, training,
    exporter, real torch kernels)."""
    if what not in REGISTRIES:
        raise typer.BadParameter(f"{what!r}: choose one of {', '.join(REGISTRIES)}")
    reg = REGISTRIES[what]
    table = Table(title=f"{what} ({reg.kind})")
    for col in ("name", "what", "capabilities"):
        table.add_column(col)
    for name in reg:
        info = reg.info(name)
        caps = ", ".join(f"{k}={v}" for k, v in vars(info).items()) if info is not None else ""
        table.add_row(name, reg.help(name), caps)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("list")(list_command)
    app.command("models")(models)
    app.add_typer(data_app, name="data")
