"""Accuracy-aware search: try quantization configs, cheapest first, until one meets the budget.

Each trial quantizes the model with one :class:`QuantConfig`, measures validation accuracy (never
the test split), packed size, and latency on the chosen backend, and is cached on disk under its
config's hash, so an interrupted search resumes where it stopped. Candidates are ordered by their
expected cost for the objective; the search stops at the first trial within the budget (or when
the trial budget runs out) and returns every trial and the Pareto front.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from finequant.catalog import METHODS
from finequant.io import cached_json
from finequant.models.base import LoadedModel
from finequant.pareto import pareto_front
from finequant.quant.api import QuantizedModel
from finequant.quant.config import QuantConfig
from finequant.tuning.mixed import FLOAT, choose_bits, mixed_config
from finequant.tuning.sensitivity import Sensitivity

@dataclass(frozen=True)
class Trial:
    name: str
    config: QuantConfig


def _float_fallback(base: QuantConfig, layers: list[str]) -> QuantConfig:
    return mixed_config(base, {layer: FLOAT for layer in layers})


def candidates(objective: str, table: list[Sensitivity], max_drop: float,
               base: QuantConfig | None = None) -> list[Trial]:
    """Trials in order of expected cost (cheapest first) for ``objective``, built on ``base``'s method.

    latency: all-int8 variants (per-channel with each observer and bias correction, then per-tensor
    with and without CLE; observer and CLE variants only for calibrated methods), then per-layer
    float fallback of the most sensitive layers (1, 2, 4, 8 of them; needs ``table``).
    size: mixed 4/8-bit weights chosen by the solver at shrinking predicted budgets, 4-bit AdaRound,
    then the latency list.
    """
    base = base or QuantConfig()
    method = base.method
    calibrated = METHODS.info(method).calibrated
    per_channel = replace(base, granularity="per-channel", weight_bits=8)
    # Per-channel weights cost nothing at run time on ORT/OpenVINO (measured: 0.78 vs 0.80 ms per-tensor
    # on EfficientNet-Lite0), while CLE's per-channel clips add float Min ops (0.90 ms): so per-channel
    # first, per-tensor variants (for backends without per-channel kernels) after.
    trials = [Trial(f"int8 {method} per-channel", per_channel)]
    if calibrated:
        trials += [Trial(f"int8 {method} per-channel, percentile", replace(per_channel, observer="percentile")),
                   Trial(f"int8 {method} per-channel, mse", replace(per_channel, observer="mse"))]
    trials.append(Trial(f"int8 {method} per-channel + bias correction", replace(per_channel, ptq=["bias-correction"])))
    if calibrated:
        trials += [Trial(f"int8 {method} per-tensor", replace(per_channel, granularity="per-tensor")),
                   Trial(f"int8 {method} per-tensor + CLE + bias correction",
                         replace(per_channel, granularity="per-tensor", ptq=["cle", "bias-correction"]))]
    eight = [r for r in table if r.bits == 8] or table
    ranked = [r.layer for r in sorted(eight, key=lambda r: (-r.accuracy_drop, r.sqnr_db))]
    for k in (1, 2, 4, 8):
        if k <= len(ranked):
            trials.append(Trial(f"int8 {method} per-channel, {k} most sensitive layer(s) in float",
                                _float_fallback(per_channel, ranked[:k])))
    if objective == "size":
        sized = []
        if any(r.bits == 4 for r in table):
            for frac in (1.0, 0.5, 0.25, 0.0):
                chosen = choose_bits(table, max_drop / 100 * frac)
                sized.append(Trial(f"mixed 4/8-bit {method}, predicted drop <= {max_drop * frac:.2f} pt",
                                   mixed_config(per_channel, chosen)))
            sized.append(Trial(f"W4 {method} per-channel + AdaRound",
                               replace(per_channel, weight_bits=4, ptq=["adaround"])))
        trials = sized + trials
    unique: dict[str, Trial] = {}
    for t in trials:
        unique.setdefault(config_key(t.config), t)
    return list(unique.values())


def config_key(config: QuantConfig, context: dict[str, Any] | None = None) -> str:
    blob = json.dumps({"config": asdict(config), "context": context or {}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def trials_front(trials: list[dict[str, Any]]) -> list[str]:
    """Names of the trials on the Pareto front of accuracy (higher), latency and size (lower)."""
    goals = {"val_accuracy": "max", "latency_ms": "min", "packed_bytes": "min"}
    return [trials[i]["name"] for i in pareto_front(trials, goals)]


def latency_ms(qm: QuantizedModel, loaded: LoadedModel, example: Any, backend: str, repeats: int = 20) -> float:
    """Median latency of the quantized model on ``example`` on ``backend``, opened through the backend
    registry like any saved model (so every backend that runs the model can time tune's trials)."""
    from finequant.runtime.backends import open_runner, to_numpy
    from finequant.runtime.bench import measure

    with open_runner(qm, backend, loaded=loaded) as runner:
        return measure(runner, to_numpy(example), warmup=3, repeats=repeats, min_seconds=0.3)["p50_ms"]


def search(trials: list[Trial], evaluate: Callable[[Trial], dict[str, Any]], *, within_budget: Callable[
        [dict[str, Any]], bool], budget_trials: int, cache_dir: Path | None, context: dict[str, Any],
           log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run trials in order (results cached in ``cache_dir`` are reused) until one is within budget or
    ``budget_trials`` have run. ``evaluate`` returns the trial's metrics."""
    done: list[dict[str, Any]] = []
    for trial in trials[:budget_trials]:
        def run() -> dict[str, Any]:
            return {"name": trial.name, "config": asdict(trial.config), **evaluate(trial)}

        if cache_dir is None:
            result, hit = run(), False
        else:
            result, hit = cached_json(cache_dir / f"{config_key(trial.config, context)}.json", run)
        if hit:
            log(f"trial {len(done) + 1} (cached): {trial.name}")
        result["within_budget"] = within_budget(result)
        done.append(result)
        log(f"trial {len(done)}: {trial.name}: val acc {result['val_accuracy']:.4f} (drop "
            f"{result['val_drop_pt']:+.2f} pt), {result['latency_ms']:.2f} ms, {result['packed_bytes'] / 1e6:.2f} MB"
            + ("  <- within budget" if result["within_budget"] else ""))
        if result["within_budget"]:
            break
    return done


def choose(done: list[dict[str, Any]], objective: str) -> dict[str, Any]:
    """The best trial within budget for the objective, else the most accurate one."""
    ok = [t for t in done if t["within_budget"]]
    if not ok:
        return max(done, key=lambda t: t["val_accuracy"])
    key = "latency_ms" if objective == "latency" else "packed_bytes"
    return min(ok, key=lambda t: (t[key], -t["val_accuracy"]))
