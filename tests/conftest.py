import numpy as np
import pytest
import torch
from torch import nn
from PIL import Image


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory):
    """The feature cache and extracted archives go to a folder of this test session, not ~/.cache."""
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def image_folder(tmp_path):
    """A tiny 3-class image folder with 6 distinct PNGs per class."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in ("cat", "dog", "owl"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def trained_cnn():
    """A small CNN trained on digits (about 5 s), shared by the quantization and PTQ tests."""
    return _trained_cnn()


def _trained_cnn():
    from finequant.data import load_data, stratified_split
    from finequant.models.base import LoadedModel, Preprocess
    from finequant.train import FinetuneConfig, finetune

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    loaded = LoadedModel(net, "test:cnn", "image", "9", {"spec": "test:cnn"},
                         preprocess=Preprocess(input_size=16, crop_pct=1.0))
    splits = stratified_split(load_data("digits"), seed=0)
    finetune(loaded, splits, FinetuneConfig(strategy="full", epochs=6, lr=1e-2, lr_mult=1))
    return loaded, splits
