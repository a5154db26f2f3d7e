"""The ``finequant`` command line: argument parsing and printing over :mod:`finequant.workflow`.

Each command module imports only configs and the catalog at import time (the library is imported
inside the command), so ``finequant --help`` and ``finequant CMD --help`` start without torch.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from finequant.cli import catalog, deploy, finetune, pipeline, quantize, report, tune
from finequant.errors import FinequantError

console = Console()
app = typer.Typer(
    name="finequant",
    help="Fine-tune a pretrained model on your data, quantize it, measure the cost, and ship it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's formatter: re-wraps docstrings, never cuts option names
    context_settings={"max_content_width": 120},
)
for module in (catalog, finetune, quantize, tune, deploy, report, pipeline):
    module.register(app)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)], force=True)


def main() -> None:
    """Entry point: finequant's own errors print one clear line and exit 1, never a traceback."""
    try:
        app()
    except FinequantError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {type(e).__name__}: {e}", highlight=False)
        sys.exit(1)
