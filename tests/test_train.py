import numpy as np
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from finequant.data import load_data, stratified_split
from finequant.errors import ConfigError
from finequant.models import load_model
from finequant.train import STRATEGIES, FinetuneConfig, finetune
from finequant.train.loop import regularization, set_trainable
from finequant.train.strategies import block_groups, head_names

TINY = "timm:test_efficientnet"


@pytest.fixture(scope="module")
def splits():
    return stratified_split(load_data("digits"), seed=0, max_samples=400)


def tiny():
    torch.manual_seed(0)
    return load_model(TINY, pretrained=False, num_classes=10)


def grads_after_one_step(strategy, **kw):
    loaded = tiny()
    cfg = FinetuneConfig(strategy=strategy, epochs=3, **kw)
    phase = STRATEGIES.get(strategy)(loaded, cfg)[0]
    set_trainable(loaded.model, phase.trainable, head_names(loaded), cfg.train_bn)
    loaded.model(torch.randn(4, 3, 32, 32)).sum().backward()
    return loaded, {n for n, p in loaded.model.named_parameters() if p.grad is not None}


def test_full_trains_everything():
    loaded, got = grads_after_one_step("full")
    assert got == {n for n, _ in loaded.model.named_parameters()}


@pytest.mark.parametrize("strategy", ["last-layer", "lp-ft", "gradual"])
def test_head_first_strategies_train_only_the_head_first(strategy):
    _, got = grads_after_one_step(strategy)
    assert got == {"classifier.weight", "classifier.bias"}


def test_partial_freezes_first_blocks_and_patterns():
    loaded, got = grads_after_one_step("partial", freeze_blocks=2, freeze_patterns=[r"\.bn\d\."])
    groups = block_groups(loaded.model, head_names(loaded))
    frozen = set(groups[0]) | set(groups[1])
    assert not (got & frozen) and "classifier.weight" in got
    assert not any(".bn1." in n or ".bn2." in n for n in got)
    assert "conv_head.weight" in got


def test_gradual_unfreezes_from_the_top_and_ends_with_all():
    loaded = tiny()
    phases = STRATEGIES.get("gradual")(loaded, FinetuneConfig(strategy="gradual", epochs=4))
    sizes = [len(p.trainable) for p in phases]
    assert sizes == sorted(sizes) and len(phases) == 4
    assert phases[-1].trainable == {n for n, _ in loaded.model.named_parameters()}
    assert "conv_head.weight" in phases[1].trainable and "conv_stem.weight" not in phases[1].trainable


def test_lp_ft_second_phase_trains_all_at_lower_lr():
    loaded = tiny()
    lp, ft = STRATEGIES.get("lp-ft")(loaded, FinetuneConfig(epochs=4))
    assert lp.epochs == 2 and ft.epochs == 2 and ft.lr_scale < 1
    assert len(ft.trainable) == len(list(loaded.model.parameters()))


def test_frozen_batchnorm_keeps_running_stats(splits):
    loaded = tiny()
    bn = loaded.model.bn1  # stem BN: block 1, frozen below
    before = bn.running_mean.clone()
    finetune(loaded, splits, FinetuneConfig(strategy="partial", freeze_blocks=2, epochs=1, image_size=32,
                                            feature_cache=False))
    torch.testing.assert_close(bn.running_mean, before, rtol=0, atol=0)
    loaded = tiny()
    finetune(loaded, splits, FinetuneConfig(strategy="partial", freeze_blocks=2, epochs=1, image_size=32,
                                            train_bn=True))
    assert not torch.equal(loaded.model.bn1.running_mean, before)


def test_l2sp_gradient_points_away_from_pretrained():
    model = nn.Linear(3, 2)
    w0 = {"weight": model.weight.detach().clone()}
    with torch.no_grad():
        model.weight.add_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
    cfg = FinetuneConfig(l2sp=0.1)
    regularization(model, frozenset({"weight", "bias"}), cfg, w0).backward()
    torch.testing.assert_close(model.weight.grad, 2 * 0.1 * (model.weight.detach() - w0["weight"]))
    assert model.bias.grad is None  # not in the pretrained set, no L1: untouched


def test_feature_cache_matches_uncached_head_and_is_faster(splits):
    runs = {}
    for cached in (True, False):
        loaded = tiny()
        r = finetune(loaded, splits, FinetuneConfig(strategy="last-layer", epochs=3, image_size=32, lr=1e-2,
                                                    feature_cache=cached, probe="sgd"))
        runs[cached] = (loaded.head.weight.detach().clone(), r)
    torch.testing.assert_close(runs[True][0], runs[False][0], atol=1e-5, rtol=1e-4)
    assert runs[True][1].metrics["test"]["accuracy"] == runs[False][1].metrics["test"]["accuracy"]
    t_cached = sum(h["epoch_time_s"] for h in runs[True][1].history)
    t_plain = sum(h["epoch_time_s"] for h in runs[False][1].history)
    assert all(h["cached"] for h in runs[True][1].history) and t_cached < t_plain


def test_features_are_stored_on_disk_and_reused_only_for_the_same_body_data_and_transform(splits, tmp_path, caplog):
    cfg = FinetuneConfig(strategy="last-layer", epochs=1, image_size=32, feature_cache_dir=str(tmp_path / "fc"))
    first = tiny()
    r1 = finetune(first, splits, cfg)
    stored = sorted((tmp_path / "fc").glob("*.npy"))
    assert len(stored) == 2 and not list((tmp_path / "fc").glob(".extracting-*"))  # train + val, complete
    train_feats = np.load(stored[0], mmap_mode="r")
    assert train_feats.dtype == np.float32 and train_feats.shape[1] == first.head.in_features
    with caplog.at_level("INFO", logger="finequant.train.features"):
        second = tiny()
        r2 = finetune(second, splits, cfg)
    assert caplog.text.count("read from the cache") == 2
    torch.testing.assert_close(second.head.weight, first.head.weight)
    assert r2.metrics["test"]["accuracy"] == r1.metrics["test"]["accuracy"]
    # another input size, or another body, is another key: extracted again, never a stale hit
    finetune(tiny(), splits, FinetuneConfig(**{**cfg.__dict__, "image_size": 48}))
    changed = tiny()
    with torch.no_grad():
        next(changed.model.parameters()).add_(0.01)
    finetune(changed, splits, cfg)
    assert len(list((tmp_path / "fc").glob("*.npy"))) == 6
    # a cache folder that cannot be created: a warning, and the run goes on in memory
    (tmp_path / "file").write_text("x")
    with caplog.at_level("WARNING", logger="finequant.train.features"):
        r3 = finetune(tiny(), splits, FinetuneConfig(**{**cfg.__dict__, "feature_cache_dir": str(tmp_path / "file")}))
    assert "not writable" in caplog.text and r3.metrics["test"]["accuracy"] == r1.metrics["test"]["accuracy"]


def test_same_seed_same_result(splits):
    accs = [finetune(tiny(), splits, FinetuneConfig(strategy="full", epochs=1, image_size=32)).history[0]["val_loss"]
            for _ in range(2)]
    assert accs[0] == accs[1]


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="strategy.*Did you mean 'lp-ft'"):
        FinetuneConfig(strategy="lpft")
    with pytest.raises(ConfigError, match="augment='heavy'"):
        FinetuneConfig(augment="heavy")
    with pytest.raises(ConfigError, match="unknown finetune key"):
        FinetuneConfig.from_dict({"epoch": 3})


def test_text_model_uses_the_same_loop():
    loaded = load_model("minilm")
    data = stratified_split(load_data("rotten_tomatoes"), seed=0, max_samples=240)
    r = finetune(loaded, data, FinetuneConfig(strategy="last-layer", epochs=3, lr=1e-2, batch_size=32))
    assert r.history[0]["cached"] and loaded.classes == ["rotten", "fresh"]
    assert r.metrics["test"]["accuracy"] > 0.6  # a linear probe on MiniLM embeddings beats chance


CLI = [sys.executable, "-m", "finequant", "finetune", "--model", TINY, "--no-pretrained", "--data", "digits",
       "--strategy", "full", "--image-size", "32", "--max-samples", "600", "--batch-size", "32"]


def _summary(path):
    return json.loads((path / "summary.json").read_text())


@pytest.mark.slow  # subprocesses / a real transformer: ~20-60 s
@pytest.mark.parametrize("augment", ["none", "light"])
def test_resume_after_sigkill_reaches_the_same_result(tmp_path, augment):
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = ["--epochs", "5", "--augment", augment]
    subprocess.run([*CLI, *args, "--out", str(ref)], check=True, capture_output=True)
    proc = subprocess.Popen([*CLI, *args, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] < 4 and not (run / "summary.json").exists()
    subprocess.run([*CLI, *args, "--out", str(run), "--resume"], check=True, capture_output=True)
    a, b = _summary(ref), _summary(run)
    assert a["metrics"]["test"] == b["metrics"]["test"]
    assert [h["val_loss"] for h in a["history"]] == pytest.approx([h["val_loss"] for h in b["history"]], abs=1e-6)


@pytest.mark.slow  # subprocesses / a real transformer: ~20-60 s
def test_two_process_ddp_matches_single_process(tmp_path):
    args = ["--epochs", "2", "--strategy", "partial", "--freeze-pattern", r"bn\d", "--seed", "1"]
    single = subprocess.run([*CLI, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                          "-m", "finequant", *CLI[3:], *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = _summary(tmp_path / "one"), _summary(tmp_path / "two")
    assert b["config"]["world_size"] == 2
    assert [h["train_loss"] for h in a["history"]] == pytest.approx([h["train_loss"] for h in b["history"]], rel=1e-3)
    assert abs(a["metrics"]["test"]["accuracy"] - b["metrics"]["test"]["accuracy"]) <= 0.01


def test_linear_probe_matches_a_tuned_logistic_regression():
    """The default head fit (L-BFGS, L2 chosen on val) is within 1 pt of scikit-learn's best C on held-out data."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from finequant.train.probe import fit_linear_probe

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    tr, va, te = idx[:1000], idx[1000:1300], idx[1300:]
    t = lambda i: (torch.tensor(x[i], dtype=torch.float32), torch.tensor(y[i]))  # noqa: E731
    head = torch.nn.Linear(64, 10)
    fit = fit_linear_probe(head, t(tr), t(va))
    with torch.no_grad():
        ours = float((head(t(te)[0]).argmax(1) == t(te)[1]).float().mean())
    sc = StandardScaler().fit(x[tr])
    best = max((LogisticRegression(C=c, max_iter=5000).fit(sc.transform(x[tr]), y[tr]) for c in (0.01, 0.1, 1, 10)),
               key=lambda m: m.score(sc.transform(x[va]), y[va]))
    assert ours >= best.score(sc.transform(x[te]), y[te]) - 0.01 and ours > 0.94
    assert fit.l2 in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0) and fit.val_accuracy > 0.9
    # a large set: the grid on a subset, then the chosen strength refit on all in float32, scores the same
    sub = torch.nn.Linear(64, 10)
    fit_sub = fit_linear_probe(sub, t(tr), t(va), grid_samples=400)
    with torch.no_grad():
        assert abs(float((sub(t(te)[0]).argmax(1) == t(te)[1]).float().mean()) - ours) <= 0.01
    assert fit_sub.val_accuracy > 0.9


def test_batchnorm_policy_keeps_pretrained_statistics_on_small_data_and_trains_fresh_ones():
    from finequant.train.distributed import DistInfo
    from finequant.train.defaults import bn_policy

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert bn_policy(net, 1000, 64, DistInfo())[0] is False  # random init: nothing to keep
    net[1].running_mean.fill_(0.3)  # as if pretrained
    frozen, why = bn_policy(net, 1000, 64, DistInfo())
    assert frozen and "1000 training samples" in why
    assert bn_policy(net, 100_000, 16, DistInfo())[0] is True  # small batches
    assert bn_policy(net, 100_000, 128, DistInfo()) == (False, "100000 training samples in batches of 128: "
                                                                "statistics are re-estimated")
