"""``TuneConfig``: what the accuracy-aware search minimizes, within which budget, measured where."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finequant.catalog import BACKENDS, METHODS
from finequant.configs import from_mapping
from finequant.errors import ConfigError

OBJECTIVES = ("latency", "size")


@dataclass(frozen=True)
class TuneConfig:
    """The search: fastest (or smallest) quantized model within ``max_drop`` on the validation split."""

    max_drop: float = 0.5
    """Accuracy budget in points on the validation split."""
    relative: bool = False
    """Read max_drop as percent of the float accuracy."""
    objective: str = "latency"
    """What to minimize within the budget: latency or size."""
    backend: str = "onnxruntime"
    """Where latency is measured (any backend that runs the trials' models)."""
    method: str = "static"
    """Base method the trials vary (static; dynamic for transformers)."""
    budget_trials: int = 8
    """Most trials to run."""
    bits: list[int] = field(default_factory=lambda: [4, 8])
    """Candidate weight bit widths for sensitivity and mixed precision."""
    sensitivity_only: bool = False
    """Only compute the per-layer sensitivity table and chart."""
    leave_one_out: bool = False
    """Also measure all-but-one-layer accuracy."""
    calib_batches: int = 8
    """Calibration batches."""
    seed: int = 0
    """Seed of the calibration sample."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective={self.objective!r}: allowed {', '.join(OBJECTIVES)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: {BACKENDS.unknown_message(self.backend)}")
        if self.method not in METHODS:
            raise ConfigError(f"method: {METHODS.unknown_message(self.method)}")
        if METHODS.info(self.method).trained:
            raise ConfigError(f"method={self.method!r} trains; tune searches post-training methods (static, dynamic)")
        info = BACKENDS.info(self.backend)
        if info is not None and not info.runs(METHODS.info(self.method)):
            able = [m for m in METHODS if info.runs(METHODS.info(m)) and not METHODS.info(m).trained]
            raise ConfigError(f"backend={self.backend!r} does not run '{self.method}' models, so it cannot time them; "
                              f"with this backend use method {' or '.join(able)}, or time on onnxruntime")
        if self.max_drop < 0:
            raise ConfigError(f"max_drop={self.max_drop} must be >= 0 (points of accuracy you accept to lose)")
        if self.budget_trials < 1 or self.calib_batches < 1:
            raise ConfigError("budget_trials and calib_batches must be >= 1")
        if not self.bits or any(not 2 <= b <= 16 for b in self.bits):
            raise ConfigError(f"bits={self.bits}: give weight bit widths between 2 and 16, e.g. [4, 8]")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TuneConfig:
        return from_mapping(cls, d, "tune")
