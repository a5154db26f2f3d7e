"""``file:`` sources: a finequant artifact folder, a state dict plus an architecture, or a Python factory."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import nn

from finequant.errors import ModelError, SpecError, UntrustedFileError
from finequant.models.base import LoadedModel, Preprocess, last_linear_name

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def create_file(name: str, *, pretrained: bool, arch: str | None = None,
                trust_remote_code: bool = False, **_: object) -> LoadedModel:
    """``file:DIR`` (finequant artifact), ``file:W.safetensors`` with ``arch``, or ``file:model.py:factory``."""
    from finequant.models import load_model
    from finequant.models.artifact import load_artifact

    path_str, _, factory = name.partition(".py:")
    if factory:
        return _from_python(Path(path_str + ".py"), factory, trust_remote_code)
    path = Path(name)
    if path.is_dir():
        return load_artifact(path, trust_remote_code=trust_remote_code)
    if path.suffix in WEIGHT_SUFFIXES:
        if not arch:
            raise SpecError(f"file:{name} holds only weights: also give the architecture, e.g. "
                            "--arch timm:resnet18 (Python: load_model(spec, arch=...))")
        return load_model(arch, pretrained=False, weights=path)
    if not path.exists():
        raise SpecError(f"file:{name}: no such file or folder")
    raise SpecError(f"file:{name}: expected a finequant artifact folder, a weights file "
                    f"({', '.join(WEIGHT_SUFFIXES)}) or model.py:factory")


def _from_python(path: Path, factory: str, trust_remote_code: bool) -> LoadedModel:
    if not trust_remote_code:
        raise UntrustedFileError(
            f"file:{path}:{factory} runs Python code from {path}. Read it, then pass "
            "--trust-remote-code (Python: trust_remote_code=True) if you trust it."
        )
    if not path.is_file():
        raise SpecError(f"file:{path}:{factory}: no such file")
    spec = importlib.util.spec_from_file_location(f"finequant_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise SpecError(f"{path} has no callable '{factory}'")
    model = fn()
    if not isinstance(model, nn.Module):
        raise ModelError(f"{path}:{factory}() returned {type(model).__name__}, not a torch.nn.Module")
    return LoadedModel(model=model, spec=f"file:{path}:{factory}", task="image",
                       head_name=last_linear_name(model),
                       recipe={"spec": f"file:{path.resolve()}:{factory}", "trust_remote_code": True},
                       preprocess=Preprocess())
