"""The ``finequant`` command line: a thin layer over the library, one module per command group."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from finequant.cli import catalog, demo, deploy, finetune, pipeline, quantize, report, tune
from finequant.errors import FinequantError

console = Console()
app = typer.Typer(
    name="finequant",
    help="Fine-tune a pretrained model on your data, quantize it, measure the cost, and ship it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
catalog.register(app)
finetune.register(app)
demo.register(app)
quantize.register(app)
deploy.register(app)
tune.register(app)
report.register(app)
pipeline.register(app)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)], force=True)


def main() -> None:
    """Entry point: finequant's own errors print one clear line and exit 1, never a traceback."""
    try:
        app()
    except FinequantError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {type(e).__name__}: {e}", highlight=False)
        sys.exit(1)
