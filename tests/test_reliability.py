import errno
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from finequant.data import load_data, stratified_split
from finequant.errors import FinequantError
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


def test_nan_loss_stops_names_the_batch_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from finequant.train import loop

    torch.manual_seed(0)
    net = _Poisonable()
    loaded = LoadedModel(net, "test:mlp", "image", "head", {"spec": "test:mlp"},
                         preprocess=Preprocess(input_size=8, crop_pct=1.0))
    splits = stratified_split(load_data("digits"), seed=0, max_samples=200)
    real, saved = loop.save_checkpoint, []

    def save_then_poison(out, state):  # the loss turns NaN right after epoch 1's checkpoint
        saved.append(real(out, state).read_bytes())
        net.poison = True

    monkeypatch.setattr(loop, "save_checkpoint", save_then_poison)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 0.*last good checkpoint \(epoch 1\)"):
        finetune(loaded, splits, FinetuneConfig(strategy="full", epochs=2, lr=1e-2), out_dir=tmp_path)
    assert len(saved) == 1 and (tmp_path / "checkpoint.pt").read_bytes() == saved[0]


def test_full_disk_leaves_no_partial_file_under_the_final_name(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old and complete")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(FinequantError, match="cannot write .*model.safetensors: No space left on device; free space"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old and complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file left behind


def test_an_input_size_the_model_cannot_take_fails_before_training(tmp_path):
    from torch import nn

    from finequant.data import load_data, stratified_split
    from finequant.errors import ModelError
    from finequant.models.base import LoadedModel, Preprocess
    from finequant.train import FinetuneConfig, finetune

    # 7x7 valid conv, then a Linear sized for 32 px inputs: 16 px images cannot pass
    net = nn.Sequential(nn.Conv2d(3, 4, 7), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    loaded = LoadedModel(net, "test:fixed32", "image", "2", {"spec": "test:fixed32"},
                         preprocess=Preprocess(input_size=32, crop_pct=1.0))
    splits = stratified_split(load_data("digits"), seed=0, max_samples=200)
    with pytest.raises(ModelError, match=r"test:fixed32 cannot take input of shape \(2, 3, 16, 16\).*image.size.*32"):
        finetune(loaded, splits, FinetuneConfig(epochs=1, image_size=16), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_image_folder_archives_load_like_the_folder(image_folder, tmp_path, fmt):
    import shutil

    from finequant.data import load_data

    archive = shutil.make_archive(str(tmp_path / "imgs"), "zip" if fmt == "zip" else "gztar", image_folder.parent,
                                  image_folder.name)
    data = load_data(f"imagefolder:{archive}")
    assert data.classes == ["cat", "dog", "owl"] and len(data) == 18
    assert len(load_data(f"imagefolder:{archive}")) == 18  # second load reuses the extraction


@pytest.mark.parametrize("member", ["../escaped.png", "/tmp/finequant-abs-escape.png", "cat/../../escaped.png"])
def test_archives_never_extract_outside_their_folder(tmp_path, member):
    import io
    import tarfile
    import zipfile

    from finequant.data import load_data
    from finequant.errors import DataError

    for kind in ("zip", "tar"):
        archive = tmp_path / f"evil.{kind}"
        if kind == "zip":
            with zipfile.ZipFile(archive, "w") as z:
                z.writestr("cat/ok.png", b"x")
                z.writestr(member, b"payload")
        else:
            with tarfile.open(archive, "w") as t:
                info = tarfile.TarInfo(member)
                info.size = 7
                t.addfile(info, io.BytesIO(b"payload"))
        with pytest.raises(DataError, match="outside the extraction folder"):
            load_data(f"imagefolder:{archive}")
    assert not (tmp_path.parent / "escaped.png").exists() and not Path("/tmp/finequant-abs-escape.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial extraction left behind


def test_archive_links_are_refused(tmp_path):
    import tarfile

    from finequant.data import load_data
    from finequant.errors import DataError

    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as t:
        info = tarfile.TarInfo("cat/passwd.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with pytest.raises(DataError, match="link or device"):
        load_data(f"imagefolder:{archive}")


@pytest.mark.slow  # subprocesses / a real transformer: ~20-60 s
def test_sigkill_during_tune_resumes_from_cached_trials(tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    cli = [sys.executable, "-m", "finequant"]
    run, out = tmp_path / "run", tmp_path / "tune"
    subprocess.run([*cli, "finetune", "--model", "timm:test_efficientnet", "--no-pretrained", "--data", "digits",
                    "--strategy", "full", "--epochs", "1", "--image-size", "32", "--max-samples", "300",
                    "--out", str(run)], check=True, capture_output=True)
    # a zero budget: the search runs trials until one loses nothing (often all three)
    args = [*cli, "tune", str(run), "--max-drop", "0", "--backend", "torch-sim", "--budget-trials", "3",
            "--calib", "2", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((out / "trials").glob("*.json")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list((out / "trials").glob("*.json")))
    assert 1 <= finished < 3 and not (out / "summary.json").exists()
    for f in (out / "trials").glob("*.json"):
        json.loads(f.read_text())  # written atomically: never a half-written trial
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("(cached)") == finished
    assert finished <= len(json.loads((out / "summary.json").read_text())["metrics"]["trials"]) <= 3


@pytest.mark.slow  # subprocesses / a real transformer: ~20-60 s
def test_a_crashed_ddp_worker_ends_the_job_instead_of_hanging(tmp_path):
    import subprocess
    import sys
    import time

    factory = tmp_path / "crashing.py"
    factory.write_text(
        "import os\nimport torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.calls = 0\n"
        "        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
        "        self.fc = nn.Linear(8, 10)\n\n"
        "    def forward(self, x):\n"
        "        self.calls += 1\n"
        "        if os.environ.get('RANK') == '1' and self.calls == 4:\n"
        "            os._exit(3)  # a worker dies mid-epoch (OOM kill, hardware fault)\n"
        "        return self.fc(self.body(x))\n\n"
        "def build():\n    return Net()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FINEQUANT_DIST_TIMEOUT": "60"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29541", "-m", "finequant", "finetune", "--model", f"file:{factory}:build",
                           "--trust-remote-code", "--data", "digits", "--strategy", "full", "--epochs", "2",
                           "--image-size", "32", "--max-samples", "600", "--batch-size", "32",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode != 0
    assert "exitcode" in proc.stderr and ": 3" in proc.stderr  # torchrun names the failed rank and its exit code
    assert time.time() - t0 < 180
    assert not (tmp_path / "run" / "summary.json").exists()
