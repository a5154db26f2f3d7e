"""``tune(model, splits, TuneConfig)``: per-layer sensitivity, then an accuracy-aware search (method,
observer, granularity, bits, advanced PTQ, per-layer float fallback, mixed precision) for the fastest
or smallest model within an accuracy budget, measured on the validation split and reported on the
test split. With ``cache_dir``, trials and the sensitivity table are cached there, keyed by the
model's weights and the data: a rerun resumes, a retrained model starts afresh."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from finequant.data import Splits, make_loader
from finequant.io import cached_json
from finequant.models.base import LoadedModel
from finequant.quant import QuantConfig, QuantizedModel, quantize
from finequant.quant.compare import compare_models
from finequant.train import evaluate as evaluate_model
from finequant.tuning.config import TuneConfig
from finequant.tuning.search import Trial, candidates, choose, config_key, latency_ms, search, trials_front
from finequant.tuning.sensitivity import Sensitivity, layer_sensitivity, leave_one_out

log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    """The chosen quantized model, every trial, the Pareto front and the test-split comparison."""

    quantized: QuantizedModel | None
    config: TuneConfig
    trials: list[dict[str, Any]] = field(default_factory=list)
    pareto: list[str] = field(default_factory=list)
    chosen: str | None = None
    chosen_config: dict[str, Any] | None = None
    budget_met: bool = False
    allowed_drop_pt: float = 0.0
    float_val_accuracy: float | None = None
    test: dict[str, Any] | None = None
    sensitivity: list[dict[str, Any]] | None = None
    leave_one_out: list[dict[str, Any]] | None = None

    def metrics(self) -> dict[str, Any]:
        """Everything but the model, JSON-able (``summary.json``'s metrics)."""
        m = {k: v for k, v in asdict(replace(self, quantized=None)).items() if k not in ("quantized", "config")}
        if self.quantized is not None:
            m["packed_bytes"] = self.quantized.packed_weight_bytes()
        m.update(objective=self.config.objective, backend=self.config.backend)
        return {k: v for k, v in m.items() if v is not None}


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of every tensor in the model: caches keyed by it never outlive a retrained model."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _probe(loaded: LoadedModel, val: list[Any]) -> Any:
    """The latency probe: a batch-1 image for image models, the first validation batch for text."""
    if loaded.task == "image":
        from finequant.runtime.backends import example_input

        return example_input(loaded)
    return val[0][0]


def tune(loaded: LoadedModel, splits: Splits, config: TuneConfig | None = None, *, cache_dir: str | Path | None = None,
         log_fn: Callable[[str], None] = log.info) -> TuneResult:
    """Search quantization configs of ``loaded`` within ``config.max_drop`` on ``splits.val``."""
    cfg = config or TuneConfig()
    torch.manual_seed(cfg.seed)
    cache = Path(cache_dir) if cache_dir is not None else None
    base = QuantConfig(method=cfg.method, calib_batches=cfg.calib_batches)
    calib = [x for x, _ in make_loader(splits.train, loaded, batch_size=32, shuffle=True, seed=cfg.seed)]
    calib = calib[:cfg.calib_batches]
    val = list(make_loader(splits.val, loaded, batch_size=128))
    n_classes = len(splits.train.classes)
    context = {"weights": weights_digest(loaded.model), "data": splits.sizes(), "val_labels": hashlib.sha256(
        splits.val.labels.tobytes()).hexdigest()[:16], "seed": cfg.seed, "calib": cfg.calib_batches,
        "backend": cfg.backend}
    key = config_key(base, {**context, "bits": cfg.bits})
    result = TuneResult(None, cfg)

    def cached(name: str, compute: Callable[[], Any]) -> Any:
        return compute() if cache is None else cached_json(cache / f"{name}-{key}.json", compute)[0]

    def sensitivity() -> list[Sensitivity]:
        """Computed on first need (size objective, float fallback, sensitivity_only), then cached."""
        if result.sensitivity is None:
            result.sensitivity = cached("sensitivity", lambda: [
                asdict(r) for r in layer_sensitivity(loaded.model, base, calib, val, bits=tuple(cfg.bits))])
        return [Sensitivity(**r) for r in result.sensitivity]

    if cfg.sensitivity_only or cfg.objective == "size":
        sensitivity()
    if cfg.leave_one_out:
        result.leave_one_out = cached("leave-one-out", lambda: leave_one_out(loaded.model, base, calib, val,
                                                                             bits=tuple(cfg.bits)))
    if cfg.sensitivity_only:
        return result
    float_acc = evaluate_model(loaded.model, val, n_classes, "cpu")["accuracy"]
    allowed_pt = cfg.max_drop * float_acc if cfg.relative else cfg.max_drop
    probe = _probe(loaded, val)

    def evaluate(trial: Trial) -> dict[str, Any]:
        t0 = time.perf_counter()
        qm = quantize(loaded, trial.config, calib)
        cmp = compare_models(loaded.model, qm.model, val, n_classes)
        return {"val_accuracy": cmp["quantized"]["accuracy"], "val_drop_pt": cmp["accuracy_drop_pt"],
                "packed_bytes": qm.packed_weight_bytes(), "latency_ms": latency_ms(qm, loaded, probe, cfg.backend),
                "seconds": time.perf_counter() - t0}

    def run_trials(trials: list[Trial], budget: int) -> list[dict[str, Any]]:
        return search(trials, evaluate, within_budget=lambda r: r["val_drop_pt"] <= allowed_pt, budget_trials=budget,
                      cache_dir=None if cache is None else cache / "trials", context=context, log=log_fn)

    # Whole-model variants need no sensitivity table; only if none fits is it computed, to rank
    # layers for float fallback (it costs one quantize + validation pass per layer and bit width).
    table = sensitivity() if result.sensitivity is not None else []
    trials = run_trials(candidates(cfg.objective, table, allowed_pt, base), cfg.budget_trials)
    if not any(t["within_budget"] for t in trials) and len(trials) < cfg.budget_trials and not table:
        tried = {t["name"] for t in trials}
        rest = [t for t in candidates(cfg.objective, sensitivity(), allowed_pt, base) if t.name not in tried]
        trials += run_trials(rest, cfg.budget_trials - len(trials))
    best = choose(trials, cfg.objective)
    qm = quantize(loaded, QuantConfig.from_dict(best["config"]), calib)
    result.test = compare_models(loaded.model, qm.model, make_loader(splits.test, loaded, batch_size=128), n_classes)
    result.quantized, result.trials, result.pareto = qm, trials, trials_front(trials)
    result.chosen, result.chosen_config, result.budget_met = best["name"], best["config"], best["within_budget"]
    result.allowed_drop_pt, result.float_val_accuracy = allowed_pt, float_acc
    return result
