"""Image folders shipped as archives (.zip, .tar, .tar.gz, .tgz), extracted safely.

Every member is checked before anything is written: absolute paths, ``..`` components, links and
device files are refused (a crafted archive cannot write outside its folder), and extraction goes
to a temporary folder renamed into place only when complete. The result is cached next to the
archive under its content digest, so a changed archive is extracted again.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from finequant.errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(archive: Path, name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and p.parts[0].endswith(":")):
        raise DataError(f"{archive}: member {name!r} would be written outside the extraction folder; "
                        "refusing the archive (re-create it with relative paths)")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def extract_archive(archive: Path) -> Path:
    """The folder holding ``archive``'s contents (extracted once, verified member by member)."""
    dest = archive.parent / f".{archive.name}.{_digest(archive)}.extracted"
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=".extracting-", dir=archive.parent))
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    _check_member(archive, info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise DataError(f"{archive}: member {info.filename!r} is a symbolic link; refusing the archive")
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                for m in t.getmembers():
                    _check_member(archive, m.name)
                    if not (m.isfile() or m.isdir()):
                        raise DataError(f"{archive}: member {m.name!r} is a link or device file; refusing the archive")
                t.extractall(tmp, filter="data")
        tmp.rename(dest)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot read the archive ({type(e).__name__}: {e})") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
