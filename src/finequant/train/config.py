"""The fine-tuning configuration: one typed dataclass, defaults that work, validation naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finequant.catalog import AUGMENTATIONS, STRATEGIES
from finequant.configs import from_mapping
from finequant.errors import ConfigError

SCHEDULES = ("cosine", "onecycle", "constant")
SAMPLERS = ("shuffle", "balanced")
CLASS_WEIGHTS = ("none", "balanced")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: allowed values are {', '.join(allowed)}")


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune. ``lr`` is the head's learning rate; the body gets ``lr / lr_mult``.

    ``distill_weight`` and ``distill_temperature`` apply when ``finetune`` gets a teacher model
    (QAT distills from the float model). ``train_bn`` lets frozen BatchNorm layers update their statistics; ``freeze_bn_stats`` keeps
    every BatchNorm's statistics at their pretrained values, even in trained blocks (small data,
    small batches, and the late phase of QAT).
    """

    strategy: str | None = None
    """Fine-tuning strategy (see `finequant list strategies`); default lp-ft, last-layer when there are fewer
    than 20 training samples per class."""
    epochs: int | None = None
    """Training epochs, all phases together; default 4, more (up to 10) when an epoch is under 50 steps."""
    batch_size: int = 64
    """Global batch size (split across torchrun processes)."""
    lr: float | str = 1e-3
    """Head learning rate, or auto (a range test at the start of the first optimizer phase picks it)."""
    lr_mult: float = 10.0
    """Body LR = lr / lr_mult (discriminative learning rates)."""
    layer_decay: float | None = None
    """Body LR multiplier per block from the top (block i of L gets layer_decay^(L-i)); default 0.8 for
    transformers, 1 otherwise."""
    weight_decay: float = 0.01
    """AdamW weight decay (not on norms and biases)."""
    schedule: str = "cosine"
    """LR schedule: cosine, onecycle or constant."""
    warmup_frac: float = 0.05
    """Fraction of steps with linear LR warm-up."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy."""
    l1: float = 0.0
    """L1 penalty on trainable weights."""
    l2sp: float = 0.0
    """L2-SP penalty toward the pretrained weights."""
    freeze_blocks: int = 0
    """partial: freeze the first N blocks."""
    freeze_patterns: list[str] = field(default_factory=list)
    """partial: freeze parameters matching this regex (repeatable)."""
    lp_epochs: int | None = None
    """lp-ft: epochs of head-only training (default half)."""
    ft_lr_scale: float = 0.5
    """lp-ft: LR scale of the full fine-tuning phase."""
    train_bn: bool = False
    """Update BatchNorm statistics of frozen layers too."""
    freeze_bn_stats: bool | None = None
    """Keep all BatchNorm statistics at pretrained values (default: decided from the data, see bn_policy)."""
    augment: str = "none"
    """Augmentation preset: none, light or standard."""
    class_weights: str = "none"
    """Loss weights per class: none or balanced."""
    sampler: str = "shuffle"
    """Batch sampler: shuffle or balanced."""
    early_stopping: int | None = None
    """Stop after N epochs without validation improvement."""
    feature_cache: bool = True
    """Cache frozen-body features for head-only epochs."""
    feature_cache_dir: str | None = None
    """Where cached features are stored on disk and reused by runs with the same body, data and transform
    (default: ~/.cache/finequant/features, or $XDG_CACHE_HOME); an empty string keeps them in memory only."""
    probe: str = "lbfgs"
    """Head-only phases on cached features: lbfgs (fit to convergence, L2 chosen on val) or sgd (epochs of AdamW)."""
    image_size: int | None = None
    """Input size in px (default: the model's)."""
    channels_last: bool | None = None
    """Images: train in channels_last memory format (default: on for models with convolutions)."""
    max_tokens: int | None = None
    """Text: truncate at this many tokens (default: 99% of the training texts fit, at most the encoder's limit)."""
    max_grad_norm: float | None = 5.0
    """Clip gradients to this norm (none: no clipping)."""
    distill_weight: float = 0.5
    """Weight of distillation from a teacher's logits (QAT)."""
    distill_temperature: float = 2.0
    """Distillation temperature."""
    seed: int = 0
    """Random seed (splits, head init, order)."""
    num_workers: int | None = None
    """DataLoader worker processes; default from the cores each process has (none with fewer than 4, or for text)."""

    def __post_init__(self) -> None:
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy: {STRATEGIES.unknown_message(self.strategy)}")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("augment", self.augment, AUGMENTATIONS)
        _choice("class_weights", self.class_weights, CLASS_WEIGHTS)
        _choice("sampler", self.sampler, SAMPLERS)
        _choice("probe", self.probe, ("lbfgs", "sgd"))
        if isinstance(self.lr, str) and self.lr != "auto":
            raise ConfigError(f"lr={self.lr!r}: give a number (e.g. 1e-3) or auto")
        if not isinstance(self.lr, str) and self.lr > 1:
            raise ConfigError(f"lr={self.lr!r} is far above any fine-tuning rate (AdamW: 1e-5 .. 1e-2); "
                              "training would diverge: use e.g. 1e-3")
        positive = {"batch_size": self.batch_size, "lr_mult": self.lr_mult,
                    **({} if self.epochs is None else {"epochs": self.epochs}),
                    **({} if isinstance(self.lr, str) else {"lr": self.lr})}
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{key}={value!r} must be > 0")
        for key in ("weight_decay", "l1", "l2sp", "label_smoothing", "warmup_frac", "freeze_blocks", "seed",
                    "num_workers"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)!r} must be >= 0")
        if not 0 <= self.distill_weight <= 1 or self.distill_temperature <= 0:
            raise ConfigError("distill_weight must be in [0, 1] and distill_temperature > 0")
        if self.train_bn and self.freeze_bn_stats:
            raise ConfigError("train_bn and freeze_bn_stats contradict each other: set at most one")
        if self.label_smoothing >= 1 or self.warmup_frac >= 1:
            raise ConfigError("label_smoothing and warmup_frac must be < 1")
        if self.lp_epochs is not None and not 0 < self.lp_epochs < (self.epochs or self.lp_epochs + 1):
            raise ConfigError(f"lp_epochs={self.lp_epochs} must be between 1 and epochs-1"
                              + (f" ({self.epochs - 1})" if self.epochs else ""))
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ConfigError(f"early_stopping={self.early_stopping} must be >= 1 epoch (or None)")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay={self.layer_decay} must be in (0, 1]")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ConfigError(f"max_tokens={self.max_tokens} must be >= 2")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"image_size={self.image_size} is too small; use >= 16 (e.g. 64)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """Build from a mapping (YAML/JSON), rejecting unknown keys by name."""
        return from_mapping(cls, d, "finetune")
