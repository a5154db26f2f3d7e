"""Commands whose engines have not landed yet. Their help says so; running one exits with code 2.

Each moves to its own module when its engine lands (see the issue named in its help).
"""

from __future__ import annotations

from collections.abc import Callable

import typer

_PLANNED = {
    "report": "Build an HTML/Markdown report from run folders.",
    "run": "Run a YAML pipeline (finetune -> quantize/tune -> export -> bench -> report).",
}


def _planned(name: str, what: str) -> Callable[..., None]:
    def command(args: list[str] = typer.Argument(None, hidden=True)) -> None:
        typer.echo(f"finequant {name} is not available in this version yet (planned: {what})", err=True)
        raise typer.Exit(code=2)

    command.__doc__ = f"[not available yet] Planned: {what}"
    command.__name__ = name
    return command


def register(app: typer.Typer) -> None:
    for name, what in _PLANNED.items():
        app.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})(
            _planned(name, what))
