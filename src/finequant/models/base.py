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

    @property
    def head(self) -> nn.Linear:
        head = self.model.get_submodule(self.head_name)
        head = getattr(head, "layer", head)  # a quantization wrapper keeps the Linear as .layer
        if not isinstance(head, nn.Linear):
            raise ModelError(f"head '{self.head_name}' of {self.spec} is {type(head).__name__}, not Linear")
        return head

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def set_num_classes(self, num_classes: int, classes: list[str] | None = None, announce: bool = True) -> list[str]:
        """Replace the head by a freshly initialized one for ``num_classes`` targets.

        Returns (and, with ``announce``, logs) the state-dict keys that are newly initialized.
        """
        if num_classes < 1:
            raise ModelError(f"num_classes must be >= 1, got {num_classes}")
        if classes is not None and len(classes) != num_classes:
            raise ModelError(f"{len(classes)} class names given for {num_classes} classes")
        self.classes = list(classes) if classes is not None else self.classes
        old = self.head
        if old.out_features == num_classes:
            return []
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        new.to(device=old.weight.device, dtype=old.weight.dtype)
        self.model.set_submodule(self.head_name, new)
        self.recipe["num_classes"] = num_classes
        self.new_keys = [f"{self.head_name}.{k}" for k in new.state_dict()]
        if announce:
            log.info("new head %s: %d -> %d classes; newly initialized: %s",
                     self.head_name, old.out_features, num_classes, ", ".join(self.new_keys))
        return self.new_keys


def last_linear_name(model: nn.Module) -> str:
    """The dotted name of the last ``nn.Linear`` in definition order: the classifier of most nets."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ModelError(f"{type(model).__name__} has no Linear layer to use as classifier head")
    return names[-1]


def forward(model: nn.Module, inputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """Call an image model on a tensor or a text model on its tokenizer's dict."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def to_device(inputs: torch.Tensor | dict[str, torch.Tensor], device: torch.device | str
              ) -> torch.Tensor | dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.to(device)
