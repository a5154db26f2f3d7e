"""Crash-safe file writes: write a temporary file, fsync, then rename over the final name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def cached_json(path: str | Path, compute: Callable[[], Any]) -> tuple[Any, bool]:
    """The JSON at ``path`` if a finished run left it there, else ``compute()`` written there atomically
    (so a killed run never leaves a half result). Returns the value and whether it came from disk."""
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text()), True
    value = compute()
    atomic_write_text(path, json.dumps(value, indent=2))
    return value, False


@contextlib.contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Write a folder as a set: yields a temporary sibling to fill, which replaces ``out`` only when the
    block finishes (the old ``out`` stays whole until then, and a failure or kill leaves it untouched)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def exclusive(out: str | Path) -> Iterator[None]:
    """An advisory lock on an output path: a second process writing the same ``out`` fails at once
    instead of silently overwriting the first one's result."""
    import fcntl

    from finequant.errors import FinequantError

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    with open(lock, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FinequantError(f"another finequant process is writing {out}; wait for it or pick another --out") \
                from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            lock.unlink(missing_ok=True)
