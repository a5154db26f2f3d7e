"""Settings finequant decides when left open: lr=auto (range test), layer-wise LR decay, text length,
channels_last."""

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from finequant.data import load_data, stratified_split
from finequant.errors import ConfigError
from finequant.models import load_model
from finequant.models.base import LoadedModel
from finequant.train import FinetuneConfig, finetune
from finequant.train.defaults import layer_depths, text_max_tokens
from finequant.train.loop import make_optimizer
from finequant.train.lr_find import find_lr
from finequant.train.strategies import Phase


def _blobs(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 16, generator=g) + 3 * nn.functional.one_hot(y, 16).float()
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def test_the_range_test_picks_a_stable_rate_and_leaves_no_trace():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    found = find_lr(net, lambda lr: torch.optim.AdamW(net.parameters(), lr=lr), _blobs(), torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert found.lr == pytest.approx(found.lr_at_min / 10) and 1e-4 < found.lr < 0.1
    assert found.losses[-1] > 2 * min(found.losses) or found.steps == 100  # ran until the loss blew up
    # the pick trains: 30 steps at it reach a lower loss than at 1/100 of it
    losses = {}
    for lr in (found.lr, found.lr / 100):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        opt = torch.optim.AdamW(m.parameters(), lr=lr)
        for x, y in _blobs() * 4:
            loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[lr] = loss.item()
    assert losses[found.lr] < losses[found.lr / 100]


def test_lr_auto_and_channels_last_are_decided_recorded_and_used():
    splits = stratified_split(load_data("digits"), seed=0, max_samples=300)
    torch.manual_seed(0)
    loaded = load_model("timm:test_efficientnet", pretrained=False, num_classes=10)
    r = finetune(loaded, splits, FinetuneConfig(strategy="full", epochs=1, lr="auto", image_size=32, batch_size=32))
    assert isinstance(r.config.lr, float) and 1e-6 <= r.config.lr <= 0.1
    assert "range test over" in r.decisions["lr"] and r.history[0]["train_loss"] > 0
    assert r.config.channels_last is True and "convolutions" in r.decisions["channels_last"]
    assert all(p.is_contiguous() for p in loaded.model.parameters())  # handed on in the usual layout
    with pytest.raises(ConfigError, match="give a number .* or auto"):
        FinetuneConfig(lr="fast")


def test_the_cli_reads_lr_as_a_number_or_auto():
    from finequant.cli.options import ConfigOptions, with_configs

    app = typer.Typer()

    @app.command()
    @with_configs(ConfigOptions(FinetuneConfig, "cfg"))
    def show(cfg: FinetuneConfig) -> None:
        print(repr(cfg.lr))

    runner = CliRunner()
    assert runner.invoke(app, ["--lr", "auto"]).output.strip() == "'auto'"
    assert runner.invoke(app, ["--lr", "3e-3"]).output.strip() == "0.003"
    assert runner.invoke(app, []).output.strip() == "0.001"
    assert "give a number" in str(runner.invoke(app, ["--lr", "fast"]).exception)


def test_layer_decay_lowers_the_rate_block_by_block_from_the_top():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), num_layers=3)
    net = nn.Module()
    net.embed, net.enc, net.norm, net.head = nn.Embedding(10, 8), enc, nn.LayerNorm(8), nn.Linear(8, 2)
    depths = layer_depths(net)
    assert depths["embed.weight"] == 4 and depths["enc.layers.0.linear1.weight"] == 3
    assert depths["enc.layers.2.linear1.weight"] == 1 and depths["norm.weight"] == 0
    names = frozenset(n for n, _ in net.named_parameters())
    head = frozenset({"head.weight", "head.bias"})
    opt = make_optimizer(net, Phase("all", 1, names), head, FinetuneConfig(lr=1e-3, lr_mult=10, layer_decay=0.5))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    params = dict(net.named_parameters())
    assert lr_of[id(params["head.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(params["norm.weight"])] == pytest.approx(1e-4)
    assert lr_of[id(params["enc.layers.2.linear1.weight"])] == pytest.approx(5e-5)
    assert lr_of[id(params["enc.layers.0.linear1.weight"])] == pytest.approx(1.25e-5)
    assert lr_of[id(params["embed.weight"])] == pytest.approx(6.25e-6)


def test_text_length_and_layer_decay_are_decided_from_the_data_and_the_model():
    loaded: LoadedModel = load_model("minilm")
    texts = ["word " * n for n in np.random.default_rng(0).integers(3, 40, 500)] + ["long " * 300]
    n, why = text_max_tokens(loaded, texts)
    lengths = sorted(len(ids) for ids in loaded.tokenizer(texts, truncation=True, max_length=512)["input_ids"])
    assert n % 8 == 0 and np.percentile(lengths, 99) <= n < np.percentile(lengths, 99) + 8 and "99%" in why
    data = stratified_split(load_data("rotten_tomatoes"), seed=0, max_samples=120)
    r = finetune(loaded, data, FinetuneConfig(strategy="last-layer", epochs=1))
    assert r.config.layer_decay == 0.8 and "transformer" in r.decisions["layer_decay"]
    assert r.config.channels_last is False
    assert r.config.max_tokens == loaded.tokenizer.model_max_length and 24 <= r.config.max_tokens <= 96
