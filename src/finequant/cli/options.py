"""CLI options derived from the config dataclasses: same names, same defaults, help from the field docs.

A command declares which configs it takes; :func:`with_configs` adds one ``--option`` per field
(``weight_bits`` -> ``--weight-bits``, plus any aliases) to its signature and hands the command
the built config objects, so a default lives in exactly one place: the dataclass.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import typer


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (read from its source, as Sphinx does)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


@dataclass(frozen=True)
class ConfigOptions:
    """One config a command takes: its class, the argument name it arrives under, and CLI tweaks."""

    cls: type
    arg: str
    exclude: tuple[str, ...] = ()
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    prefix: str = ""
    choices: dict[str, str] = field(default_factory=dict)  # field -> allowed values shown in the help


def _option_params(spec: ConfigOptions) -> list[inspect.Parameter]:
    docs = field_docs(spec.cls)
    hints = typing.get_type_hints(spec.cls)
    params = []
    for f in fields(spec.cls):
        if f.name in spec.exclude or not f.init:
            continue
        tp = hints[f.name]
        if typing.get_origin(tp) is dict:
            continue  # mappings (per-layer overrides) come from YAML or Python, not flags
        default = f.default_factory() if f.default is MISSING else f.default
        flag = spec.prefix + f.name.replace("_", "-")
        names = [f"--{flag}", *spec.aliases.get(f.name, ())]
        if tp is bool:
            names = [f"--{flag}/--no-{flag}"]
        help_text = docs.get(f.name, "")
        if f.name in spec.choices:
            help_text += f" One of: {spec.choices[f.name]}."
        if _number_or_word(tp):  # typer takes no unions: read a string, parse it in with_configs
            tp, default = str, str(default)
        option = typer.Option(default, *names, help=help_text, show_default=True)
        params.append(inspect.Parameter(spec.prefix.replace("-", "_") + f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=option, annotation=tp))
    return params


def _number_or_word(tp: Any) -> bool:
    """A field that takes a number or a word (``lr: float | str``: 3e-3 or auto)."""
    args = set(typing.get_args(tp))
    return str in args and bool(args & {int, float})


def _parse_number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def with_configs(*specs: ConfigOptions) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add each config's fields as options; the command gets ``spec.arg=ConfigInstance``."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn).parameters.values() if p.name not in {s.arg for s in specs}]
        extra = [p for s in specs for p in _option_params(s)]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            for s in specs:
                pre = s.prefix.replace("-", "_")
                values = {f.name: kwargs.pop(pre + f.name) for f in fields(s.cls) if pre + f.name in kwargs}
                hints = typing.get_type_hints(s.cls)
                values = {k: _parse_number(v) if _number_or_word(hints[k]) else v for k, v in values.items()}
                kwargs[s.arg] = s.cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()})
            return fn(**kwargs)

        command.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
        return command

    return wrap
