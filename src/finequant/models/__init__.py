"""Model sources: one spec string -> model, preprocessing and head handle.

Specs: ``timm:NAME``, ``torchvision:NAME``, ``hf:PATH_OR_NAME``, ``file:PATH`` and the bundled
``efficientnet_lite0`` and ``minilm``. Add a source with one ``MODEL_SOURCES.register`` entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from finequant.errors import SpecError
from finequant.models.artifact import load_artifact, save_artifact
from finequant.models.base import LoadedModel, Preprocess
from finequant.models.local import create_file
from finequant.models.text import TextClassifier, create_hf, create_minilm
from finequant.models.vision import create_efficientnet_lite0, create_timm, create_torchvision
from finequant.models.weights import load_into, load_state_dict
from finequant.registry import Registry

SourceFn = Callable[..., LoadedModel]

MODEL_SOURCES: Registry[SourceFn] = Registry("model source")
MODEL_SOURCES.register("timm", "timm:NAME - any timm model (--weights PATH for local weights)")(create_timm)
MODEL_SOURCES.register("torchvision", "torchvision:NAME - a torchvision classifier")(create_torchvision)
MODEL_SOURCES.register("hf", "hf:PATH_OR_NAME - Hugging Face encoder + classification head")(create_hf)
MODEL_SOURCES.register("file", "file:PATH - finequant model folder, weights + --arch, or model.py:factory")(
    create_file)

BUNDLED_MODELS: Registry[SourceFn] = Registry("bundled model")
BUNDLED_MODELS.register("efficientnet_lite0", "ImageNet EfficientNet-Lite0, 4.65 M params (image)")(
    create_efficientnet_lite0)
BUNDLED_MODELS.register("minilm", "sentence-transformers all-MiniLM-L6-v2, 22.7 M params (text)")(create_minilm)


def parse_spec(spec: str) -> tuple[SourceFn, str]:
    """Split ``source:name`` (or a bundled name) into the source function and its argument."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("empty model spec: give e.g. timm:resnet18, efficientnet_lite0 or hf:PATH")
    spec = spec.strip()
    if spec in BUNDLED_MODELS:
        return BUNDLED_MODELS.get(spec), ""
    prefix, sep, name = spec.partition(":")
    if sep and prefix in MODEL_SOURCES:
        if not name:
            raise SpecError(f"model spec '{spec}' names no model after '{prefix}:'")
        return MODEL_SOURCES.get(prefix), name
    known = MODEL_SOURCES.names() + BUNDLED_MODELS.names()
    import difflib

    close = difflib.get_close_matches(spec if not sep else prefix, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise SpecError(f"unknown model spec '{spec}'.{hint} Use SOURCE:NAME with SOURCE in "
                    f"{', '.join(MODEL_SOURCES.names())}, or a bundled model: {', '.join(BUNDLED_MODELS.names())}.")


def load_model(spec: str, *, pretrained: bool = True, weights: str | Path | None = None,
               num_classes: int | None = None, classes: list[str] | None = None,
               arch: str | None = None, trust_remote_code: bool = False) -> LoadedModel:
    """Resolve ``spec`` to a :class:`LoadedModel`.

    ``weights`` loads a local state dict (its head size is taken from the file); ``num_classes``
    then replaces the head by a new one for the target classes (logging the new keys).
    """
    source, name = parse_spec(spec)
    loaded = source(name, pretrained=pretrained and weights is None, arch=arch,
                    trust_remote_code=trust_remote_code)
    if weights is not None:
        state = load_state_dict(weights)
        head_w = state.get(f"{loaded.head_name}.weight")
        if head_w is not None and head_w.shape[0] != loaded.num_classes:
            loaded.set_num_classes(int(head_w.shape[0]))
        load_into(loaded.model, state, source=str(weights))
        loaded.new_keys = []
    if num_classes is not None or classes is not None:
        # with random weights everywhere (pretrained=False) a "newly initialized head" is no news
        loaded.set_num_classes(num_classes if num_classes is not None else len(classes), classes,
                               announce=pretrained or weights is not None)
    loaded.model.eval()
    return loaded


__all__ = [
    "BUNDLED_MODELS", "MODEL_SOURCES", "LoadedModel", "Preprocess", "TextClassifier",
    "load_artifact", "load_model", "save_artifact",
]
