import numpy as np
import pytest
import torch
from PIL import Image


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
