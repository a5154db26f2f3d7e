"""Image folders shipped as archives (.zip, .tar, .tar.gz, .tgz), extracted safely.

Every member is checked before anything is written: absolute paths, ``..`` components, links and
device files are refused (a crafted archive cannot write outside its folder), and extraction goes
to a temporary folder renamed into place only when complete. The result is cached next to the
archive under its content digest, so a changed archive is extracted again.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from finequant.errors import DataError
from finequant.io import file_digest, user_cache_dir

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_BYTES_ENV, MAX_FILES_ENV = "FINEQUANT_MAX_ARCHIVE_MB", "FINEQUANT_MAX_ARCHIVE_FILES"
MAX_RATIO = 200  # image archives compress a few times at most; zip bombs compress ~1000x


def _limits() -> tuple[int, int]:
    try:
        return (int(os.environ.get(MAX_BYTES_ENV, "8192")) << 20, int(os.environ.get(MAX_FILES_ENV, "1000000")))
    except ValueError as e:
        raise DataError(f"{MAX_BYTES_ENV}/{MAX_FILES_ENV} must be integers ({e})") from e


def _check_size(archive: Path, total: int, count: int) -> None:
    """Refuse an archive that would expand beyond the limits, before anything is written."""
    max_bytes, max_files = _limits()
    packed = max(archive.stat().st_size, 1)
    if total > max_bytes or count > max_files or (total > 64 << 20 and total / packed > MAX_RATIO):
        raise DataError(f"{archive}: expands to {total / 2**20:.0f} MB in {count} files from {packed / 2**20:.1f} MB "
                        f"(limits: {max_bytes >> 20} MB, {max_files} files, {MAX_RATIO}x compression); refusing it "
                        f"as a possible decompression bomb. Raise {MAX_BYTES_ENV}/{MAX_FILES_ENV} if you trust it")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(archive: Path, name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and p.parts[0].endswith(":")):
        raise DataError(f"{archive}: member {name!r} would be written outside the extraction folder; "
                        "refusing the archive (re-create it with relative paths)")


def extract_archive(archive: Path) -> Path:
    """The folder holding ``archive``'s contents (extracted once, verified member by member)."""
    name = f".{archive.name}.{file_digest(archive)}.extracted"
    # beside the archive, or in the user's cache when the archive's folder is read-only
    cache = user_cache_dir("extracted")
    for dest in (archive.parent / name, cache / name):
        if dest.is_dir():
            return dest
    tmp = None
    for root in (archive.parent, cache):
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp, dest = Path(tempfile.mkdtemp(prefix=".extracting-", dir=root)), root / name
            break
        except OSError as e:
            error = e
    if tmp is None:
        raise DataError(f"{archive}: nowhere to extract it ({error}); extract it yourself and pass the folder")
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    _check_member(archive, info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise DataError(f"{archive}: member {info.filename!r} is a symbolic link; refusing the archive")
                _check_size(archive, sum(i.file_size for i in z.infolist()), len(z.infolist()))
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                for m in t.getmembers():
                    _check_member(archive, m.name)
                    if not (m.isfile() or m.isdir()):
                        raise DataError(f"{archive}: member {m.name!r} is a link or device file; refusing the archive")
                _check_size(archive, sum(m.size for m in t.getmembers()), len(t.getmembers()))
                t.extractall(tmp, filter="data")
        tmp.rename(dest)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot read the archive ({type(e).__name__}: {e})") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
