"""What every model source returns: the model, its preprocessing and a handle to its head."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from finequant.errors import ModelError

log = logging.getLogger(__name__)

Task = Literal["image", "text"]


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing taken from the pretrained config (never hard-coded by callers)."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_size: int = 224
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def with_size(self, size: int | None) -> Preprocess:
        """The same normalization at another input size (small data sets train at 64-96 px)."""
        return self if size is None else replace(self, input_size=int(size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __post_init__(self) -> None:
        if not 8 <= self.input_size <= 4096:
            raise ValueError(f"input_size={self.input_size} is outside 8..4096 px")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct={self.crop_pct} must be in (0, 1]")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            input_size=int(d["input_size"]),
            interpolation=d.get("interpolation", "bilinear"),
            crop_pct=float(d.get("crop_pct", 0.875)),
        )


@dataclass
class LoadedModel:
    """A model plus everything needed to feed it, adapt its head and rebuild it.

    ``recipe`` is a JSON-able description (source, architecture, num_classes, ...) from which
    :func:`finequant.models.build_from_recipe` rebuilds the architecture without weights.
    """

    model: nn.Module
    spec: str
    task: Task
    head_name: str
    recipe: dict[str, Any]
    preprocess: Preprocess | None = None
    tokenizer: Any = None
    classes: list[str] | None = None
    new_keys: list[str] = field(default_factory=list)
    extra_heads: list[str] = field(default_factory=list)
    """Other layers that output classes (timm's distillation head ``head_dist``): replaced with the head."""

    @property
    def head_names(self) -> list[str]:
        return [self.head_name, *self.extra_heads]

    @property
    def head(self) -> nn.Linear | nn.Conv2d:
        """The classifier layer: a Linear, or a 1x1 Conv2d (SqueezeNet-style heads)."""
        head = self.model.get_submodule(self.head_name)
        head = getattr(head, "layer", head)  # a quantization wrapper keeps the layer as .layer
        if not isinstance(head, (nn.Linear, nn.Conv2d)):
            raise ModelError(f"head '{self.head_name}' of {self.spec} is {type(head).__name__}, not Linear or a "
                             "1x1 Conv2d")
        return head

    @property
    def num_classes(self) -> int:
        head = self.head
        return head.out_features if isinstance(head, nn.Linear) else head.out_channels

    def set_num_classes(self, num_classes: int, classes: list[str] | None = None, announce: bool = True) -> list[str]:
        """Replace the head by a freshly initialized one for ``num_classes`` targets.

        Returns (and, with ``announce``, logs) the state-dict keys that are newly initialized.
        """
        if num_classes < 1:
            raise ModelError(f"num_classes must be >= 1, got {num_classes}")
        if classes is not None and len(classes) != num_classes:
            raise ModelError(f"{len(classes)} class names given for {num_classes} classes")
        self.classes = list(classes) if classes is not None else self.classes
        old, before_classes = self.head, self.num_classes
        if before_classes == num_classes:
            return []
        before = set(self.model.state_dict())
        if hasattr(self.model, "reset_classifier") and isinstance(old, nn.Linear):
            # timm's own method replaces every head that outputs classes (DeiT's head and head_dist too)
            self.model.reset_classifier(num_classes)
            self.model.to(device=old.weight.device)
            self.new_keys = [k for k in self.model.state_dict()
                             if any(k.startswith(h + ".") for h in self.head_names) or k not in before]
        else:
            if isinstance(old, nn.Linear):
                new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
            else:
                new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                                bias=old.bias is not None)
            new.to(device=old.weight.device, dtype=old.weight.dtype)
            self.model.set_submodule(self.head_name, new)
            self.new_keys = [f"{self.head_name}.{k}" for k in new.state_dict()]
        self.recipe["num_classes"] = num_classes
        if announce:
            log.info("new head %s: %d -> %d classes; newly initialized: %s",
                     self.head_name, before_classes, num_classes, ", ".join(self.new_keys))
        return self.new_keys


def last_linear_name(model: nn.Module, num_classes: int | None = None) -> str:
    """The classifier: the last ``nn.Linear`` in definition order, or, for nets whose head is a 1x1
    convolution (SqueezeNet), the last 1x1 Conv2d with ``num_classes`` outputs."""
    for name, m in reversed(list(model.named_modules())):
        if isinstance(m, nn.Linear):
            return name
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and num_classes is not None
                and m.out_channels == num_classes):
            return name
    raise ModelError(f"{type(model).__name__} has no Linear layer (or 1x1 Conv2d with {num_classes} outputs) to use "
                     "as classifier head")


def forward(model: nn.Module, inputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """Call an image model on a tensor or a text model on its tokenizer's dict."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def to_device(inputs: torch.Tensor | dict[str, torch.Tensor], device: torch.device | str
              ) -> torch.Tensor | dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.to(device)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Set every BatchNorm layer's statistics from ``batches`` (cumulative average), leaving ``model`` in eval
    mode: a random-init model keeps its initial (0, 1) statistics otherwise, and signals vanish through deep
    nets (MobileNetV3's logits were 4e-8, which int8 rounds to exactly 0)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for x in batches:
        model(x)
    model.eval()
