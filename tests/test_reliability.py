import errno
import os

import pytest
import torch
from torch import nn

from finequant.data import load_data, stratified_split
from finequant.io import atomic_write_bytes
from finequant.models.base import LoadedModel, Preprocess
from finequant.train import FinetuneConfig, TrainingDiverged, finetune


class _Poisonable(nn.Module):
    """A small classifier whose output turns NaN on demand."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)
        self.poison = False

    def forward(self, x):
        y = self.head(self.body(x))
        return y * float("nan") if self.poison else y


def test_nan_loss_stops_names_the_batch_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = _Poisonable()
    loaded = LoadedModel(net, "test:mlp", "image", "head", {"spec": "test:mlp"},
                         preprocess=Preprocess(input_size=8, crop_pct=1.0))
    splits = stratified_split(load_data("digits"), seed=0, max_samples=200)
    cfg = FinetuneConfig(strategy="full", epochs=1, lr=1e-2)
    finetune(loaded, splits, cfg, out_dir=tmp_path)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    net.poison = True
    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 0.*last good checkpoint \(epoch 1\)"):
        finetune(loaded, splits, FinetuneConfig(strategy="full", epochs=2, lr=1e-2), out_dir=tmp_path, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


def test_full_disk_leaves_no_partial_file_under_the_final_name(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old and complete")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old and complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file left behind
