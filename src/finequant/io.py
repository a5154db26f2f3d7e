"""Crash-safe file writes (write a temporary file, fsync, then rename over the final name), folder locks
and content digests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from finequant.errors import FinequantError


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/finequant/PARTS`` (default ``~/.cache/finequant/PARTS``); not created."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "finequant", *parts)


def write_error(path: str | Path, e: OSError) -> FinequantError:
    """A failed write (full disk, read-only folder, no permission) as one line naming the path and the fix."""
    return FinequantError(f"cannot write {path}: {e.strerror or e}; free space there or pick another --out "
                          "(the previous output, if any, is unchanged)")


def check_writable(out: str | Path, need_bytes: int = 0) -> None:
    """Fail before any work when ``out`` (a file or folder to be) cannot be written, or its disk has less than
    ``need_bytes`` free: a read-only or full ``--out`` is found at once, not after an epoch of training."""
    out = Path(out)
    where = out if out.is_dir() else out.parent
    blocker = next((p for p in (where, *where.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise FinequantError(f"cannot write {out}: {blocker} is a file, not a folder; pick another --out")
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".write-probe{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise write_error(out, e) from None
    free = shutil.disk_usage(where).free
    if free < need_bytes:
        raise FinequantError(f"cannot write {out}: {_human(free)} free on its disk, this step needs about "
                             f"{_human(need_bytes)}; free space there or pick another --out")


def _human(n: float) -> str:
    units, i = ("B", "KB", "MB", "GB"), 0
    while n >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def file_digest(path: str | Path) -> str:
    """The first 16 hex digits of ``path``'s SHA-256 (what caches and source records are keyed by)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


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
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as e:
        raise write_error(out, e) from e
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
