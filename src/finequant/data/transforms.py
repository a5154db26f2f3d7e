"""Image transforms built from a model's :class:`Preprocess`, plus augmentation presets."""

from __future__ import annotations

from torchvision import transforms as T

from finequant.catalog import AUGMENTATIONS
from finequant.errors import ConfigError
from finequant.models.base import Preprocess



def _interp(name: str) -> T.InterpolationMode:
    return T.InterpolationMode(name) if name in {m.value for m in T.InterpolationMode} else T.InterpolationMode.BILINEAR


def image_transform(pre: Preprocess, augment: str = "none") -> T.Compose:
    """Resize/crop/normalize as the pretrained config says; ``augment`` adds training-time noise.

    ``light`` keeps orientation (safe for digits and text-like images); ``standard`` adds flips
    and colour jitter for natural photos.
    """
    if augment not in AUGMENTATIONS:
        raise ConfigError(f"augment={augment!r}: allowed values are {', '.join(AUGMENTATIONS)}")
    size, mode = pre.input_size, _interp(pre.interpolation)
    tail = [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    if augment == "none":
        return T.Compose([T.Resize(round(size / pre.crop_pct), interpolation=mode), T.CenterCrop(size), *tail])
    ops: list = [T.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1), interpolation=mode)]
    if augment == "light":
        ops.append(T.RandomRotation(10, interpolation=T.InterpolationMode.BILINEAR))
    else:
        ops += [T.RandomHorizontalFlip(), T.ColorJitter(0.3, 0.3, 0.3)]
    return T.Compose([*ops, *tail])
