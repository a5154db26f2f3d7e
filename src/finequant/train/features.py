"""Frozen-body features for head-only phases: extracted once into a memory-mapped file on disk, and reused
by later runs whose body weights, data and input transform are the same (keyed by their hashes).

The file is written batch by batch (never the whole set in memory twice) and renamed into place when
complete, so an interrupted extraction leaves nothing that a later run could mistake for a cache hit.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader

from finequant.data.base import LabeledData
from finequant.io import user_cache_dir
from finequant.models.base import LoadedModel, forward, to_device

log = logging.getLogger(__name__)


def features_key(loaded: LoadedModel, data: LabeledData) -> str:
    """A digest of what the head's input depends on: the body's weights and buffers (not the head's), the
    items (image files by path, size and modification time; arrays and texts by content) and the transform."""
    h = hashlib.sha256()
    head = {id(t) for t in loaded.head.parameters()}
    for name, t in loaded.model.state_dict(keep_vars=True).items():
        if id(t) not in head:
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    for item in data.items:
        if data.kind == "image" and isinstance(item, (str, Path)):
            st = os.stat(item)
            h.update(f"{item}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        elif isinstance(item, str):
            h.update(item.encode() + b"\0")
        else:
            arr = np.ascontiguousarray(item)
            h.update(f"{arr.shape}{arr.dtype}".encode() + arr.tobytes())
    transform = (repr(loaded.preprocess.to_dict()) if data.kind == "image" and loaded.preprocess else
                 f"{type(loaded.tokenizer).__name__}:{getattr(loaded.tokenizer, 'model_max_length', '')}")
    h.update(transform.encode())
    return h.hexdigest()


@torch.no_grad()
def extract_features(model: nn.Module, head: nn.Module, loader: DataLoader, device: torch.device,
                     progress: str | None = None, out: Path | None = None) -> torch.Tensor:
    """Run the frozen body once and keep what the head receives (its input) for every sample, in memory or
    appended batch by batch to the ``.npy`` file ``out`` (then memory-mapped); a progress bar titled ``progress``.

    Plain writes, not a writable memory map: a full disk is then an ``OSError`` here, not a SIGBUS later."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, args, out_: captured.append(args[0].detach().float().cpu()))
    model.eval()
    try:
        with Progress(transient=True, disable=progress is None) as bar, \
                (open(out, "wb") if out is not None else contextlib.nullcontext()) as f:
            task = bar.add_task(progress or "", total=len(loader))
            for inputs, _ in loader:
                forward(model, to_device(inputs, device))
                if f is not None:
                    batch = captured.pop().numpy()
                    if not f.tell():
                        shape = (len(loader.dataset), *batch.shape[1:])
                        np.lib.format.write_array_header_1_0(
                            f, {"descr": np.lib.format.dtype_to_descr(batch.dtype), "fortran_order": False,
                                "shape": shape})
                    f.write(batch.tobytes())
                bar.advance(task)
    finally:
        hook.remove()
    return torch.cat(captured) if out is None else torch.from_numpy(np.load(out, mmap_mode="c"))


def cached_features(loaded: LoadedModel, data: LabeledData, loader: DataLoader, device: torch.device,
                    cache_dir: Path | None, progress: str | None = None) -> torch.Tensor:
    """The head-input features of ``data`` (in ``loader``'s order): read from ``cache_dir`` when an earlier run
    stored them for the same body, data and transform, else extracted (and stored there when it is writable)."""
    if cache_dir is None:
        return extract_features(loaded.model, loaded.head, loader, device, progress)
    path = cache_dir / f"{features_key(loaded, data)}.npy"
    if path.is_file():
        try:
            feats = torch.from_numpy(np.load(path, mmap_mode="c"))
            if len(feats) == len(data):
                log.info("features of %d samples read from the cache %s", len(data), path)
                return feats
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable feature cache %s (%s); extracting again", path, e)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".extracting-", suffix=".npy", dir=cache_dir)
        os.close(fd)
    except OSError as e:
        log.warning("feature cache folder %s is not writable (%s); keeping features in memory", cache_dir, e)
        return extract_features(loaded.model, loaded.head, loader, device, progress)
    try:
        extract_features(loaded.model, loaded.head, loader, device, progress, Path(tmp))
        os.replace(tmp, path)
    except OSError as e:  # a full disk: the run goes on with the features in memory
        log.warning("cannot store features in %s (%s); keeping them in memory", cache_dir, e)
        return extract_features(loaded.model, loaded.head, loader, device, progress)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info("features of %d samples stored in the cache %s", len(data), path)
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def default_cache_dir() -> Path:
    return user_cache_dir("features")
