"""The fine-tuning configuration: one typed dataclass, defaults that work, validation naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finequant.configs import from_mapping
from finequant.errors import ConfigError

SCHEDULES = ("cosine", "onecycle", "constant")
SAMPLERS = ("shuffle", "balanced")
CLASS_WEIGHTS = ("none", "balanced")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: allowed values are {', '.join(allowed)}")


@dataclass
class FinetuneConfig:
    """How to fine-tune. ``lr`` is the head's learning rate; the body gets ``lr / lr_mult``.

    ``distill_weight`` and ``distill_temperature`` apply when ``finetune`` gets a teacher model
    (QAT distills from the float model). ``train_bn`` lets frozen BatchNorm layers update their statistics; ``freeze_bn_stats`` keeps
    every BatchNorm's statistics at their pretrained values, even in trained blocks (small data,
    small batches, and the late phase of QAT).
    """

    strategy: str = "lp-ft"
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    lr_mult: float = 10.0
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_frac: float = 0.05
    label_smoothing: float = 0.0
    l1: float = 0.0
    l2sp: float = 0.0
    freeze_blocks: int = 0
    freeze_patterns: list[str] = field(default_factory=list)
    lp_epochs: int | None = None
    ft_lr_scale: float = 0.5
    train_bn: bool = False
    freeze_bn_stats: bool = False
    augment: str = "none"
    class_weights: str = "none"
    sampler: str = "shuffle"
    early_stopping: int | None = None
    feature_cache: bool = True
    image_size: int | None = None
    max_grad_norm: float | None = 5.0
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        from finequant.data.transforms import AUGMENTATIONS
        from finequant.train.strategies import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy: {STRATEGIES.unknown_message(self.strategy)}")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("augment", self.augment, AUGMENTATIONS)
        _choice("class_weights", self.class_weights, CLASS_WEIGHTS)
        _choice("sampler", self.sampler, SAMPLERS)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "lr_mult": self.lr_mult}
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{key}={value!r} must be > 0")
        for key in ("weight_decay", "l1", "l2sp", "label_smoothing", "warmup_frac", "freeze_blocks"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)!r} must be >= 0")
        if not 0 <= self.distill_weight <= 1 or self.distill_temperature <= 0:
            raise ConfigError("distill_weight must be in [0, 1] and distill_temperature > 0")
        if self.train_bn and self.freeze_bn_stats:
            raise ConfigError("train_bn and freeze_bn_stats contradict each other: set at most one")
        if self.label_smoothing >= 1 or self.warmup_frac >= 1:
            raise ConfigError("label_smoothing and warmup_frac must be < 1")
        if self.lp_epochs is not None and not 0 < self.lp_epochs < self.epochs:
            raise ConfigError(f"lp_epochs={self.lp_epochs} must be between 1 and epochs-1 ({self.epochs - 1})")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ConfigError(f"early_stopping={self.early_stopping} must be >= 1 epoch (or None)")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"image_size={self.image_size} is too small; use >= 16 (e.g. 64)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """Build from a mapping (YAML/JSON), rejecting unknown keys by name."""
        return from_mapping(cls, d, "finetune")
