"""``evaluate`` and ``bench``: accuracy and speed of any model on any backend.

Whenever a quantized model runs on a runtime (not the simulation), its outputs are first compared
with the simulated model on one batch: if the runtime computes something else (an unsupported
configuration, a kernel that saturates), that is an error, never a silently different accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from finequant.data import LabeledData, make_loader
from finequant.errors import FinequantError
from finequant.models.base import forward
from finequant.cpu import cpu_description
from finequant.runtime.agreement import cosine, simulation_agreement, simulation_explains
from finequant.runtime.backends import Deployable, Runner, open_runner, to_numpy
from finequant.runtime.bench import measure_side_by_side, peak_rss_mb
from finequant.train.metrics import confusion, metrics_from_confusion

MIN_AGREEMENT_COSINE = 0.99


def check_runtime_matches_simulation(runner: Runner, dep: Deployable, x: Any) -> float:
    """Cosine between the runtime's and the simulation's logits on ``x``; raises when they disagree."""
    with torch.no_grad():
        sim = forward(dep.model.eval(), x).float().numpy()
    got = runner.predict(to_numpy(x))
    if not np.isfinite(got).all():
        raise FinequantError(f"{runner.backend} returns NaN/Inf logits for this model; it cannot be evaluated")
    cos = cosine(got, sim)
    # below the floor, the runtime still computes what was simulated when it departs by no more than the
    # simulation's own rounding-flip noise (the export check's rule)
    if not cos >= MIN_AGREEMENT_COSINE and not simulation_explains(simulation_agreement(dep.model, x, got)):
        cfg = dep.quantized.config if dep.quantized is not None else None
        raise FinequantError(
            f"{runner.backend} computes different outputs than the simulated model (cosine {cos:.3f} < "
            f"{MIN_AGREEMENT_COSINE}); its accuracy would not be the one measured. Configuration: method="
            f"{getattr(cfg, 'method', None)}, act_bits={getattr(cfg, 'act_bits', None)}, act_symmetric="
            f"{getattr(cfg, 'act_symmetric', None)}, reduce_range={getattr(cfg, 'reduce_range', None)} on "
            f"{cpu_description()}: quantize again on this CPU with the defaults, or evaluate on 'torch-sim'")
    return cos


def evaluate(model: Any, data: LabeledData, backend: str = "torch-sim", *, loaded: Any = None, batch_size: int = 64,
             threads: int | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1 and the confusion matrix of ``model`` on all of ``data``, run on ``backend``."""
    with open_runner(model, backend, threads, loaded=loaded) as runner:
        dep = runner.info["deployable"]
        n = len(data.classes)
        cm = torch.zeros(n, n, dtype=torch.long)
        agreement = None
        for x, y in make_loader(data, dep.loaded, batch_size=batch_size):
            if agreement is None and dep.quantized is not None and backend != "torch-sim":
                agreement = check_runtime_matches_simulation(runner, dep, x)
            logits = runner.predict(to_numpy(x))
            if not np.isfinite(logits).all():
                raise FinequantError(f"{backend} returned NaN/Inf logits: the model's weights or inputs are broken")
            cm += confusion(torch.from_numpy(logits).argmax(1), y, n)
    out = {"backend": backend, "samples": int(cm.sum()), **metrics_from_confusion(cm)}
    if agreement is not None:
        out["simulation_cosine"] = agreement
    return out


def bench(models: dict[str, Any], backends: list[str], batches: list[int], *, threads: int | None = None,
          loaded: Any = None, rounds: int = 30) -> list[dict[str, Any]]:
    """Latency of every (model, backend) at each batch size, timed side by side in alternating blocks.

    A pair the backend cannot run (an int8 model on eager torch) gets a row with ``skipped``."""
    rows: list[dict[str, Any]] = []
    runners: dict[tuple[str, str], Runner] = {}
    try:
        for name, model in models.items():
            for backend in backends:
                try:
                    runners[(name, backend)] = open_runner(model, backend, threads, loaded=loaded)
                except FinequantError as e:
                    rows.append({"model": name, "backend": backend, "skipped": str(e)})
        if not runners:
            return rows
        groups: dict[Any, dict[tuple[str, str], Runner]] = {}  # models that take the same input
        for key, r in runners.items():
            loaded_ = r.info["loaded"]
            groups.setdefault(loaded_.preprocess.input_size if loaded_.task == "image" else "text", {})[key] = r
        for group in groups.values():
            for b in batches:
                x = to_numpy(next(iter(group.values())).info["deployable"].example(b))
                timed = measure_side_by_side({f"{m}\0{k}": r for (m, k), r in group.items()}, x, rounds=rounds)
                for (m, k), r in group.items():
                    rows.append({"model": m, "backend": k, "file_bytes": r.file_bytes, **timed[f"{m}\0{k}"],
                                 "peak_rss_mb": peak_rss_mb()})
    finally:
        for r in runners.values():
            r.close()
    return rows
