import itertools

import pytest
import torch
from torch import nn

from finequant.data import load_data, make_loader, stratified_split
from finequant.models.base import LoadedModel, Preprocess
from finequant.quant import QuantConfig, quantize
from finequant.train import FinetuneConfig, finetune
from finequant.tuning import FLOAT, Sensitivity, choose_bits, layer_sensitivity, mixed_config


def _table():
    # (layer, bits, drop, params): layer c is very sensitive at 4 bits, d at both widths
    spec = {"a": (0.001, 0.0, 1000), "b": (0.004, 0.001, 4000), "c": (0.05, 0.002, 2000), "d": (0.03, 0.02, 500)}
    return [Sensitivity(name, bits, 0.0, 0.0, drop, params)
            for name, (d4, d8, params) in spec.items() for bits, drop in ((4, d4), (8, d8))]


@pytest.mark.parametrize("budget", [0.0, 0.005, 0.01, 0.03, 0.2])
def test_solver_respects_the_budget_at_least_cost(budget):
    table = _table()
    chosen = choose_bits(table, budget)
    drops = {(r.layer, r.bits): r.accuracy_drop for r in table}
    params = {r.layer: r.weight_params for r in table}

    def drop(c):
        return sum(0.0 if b == FLOAT else drops[(layer, b)] for layer, b in c.items())

    def cost(c):
        return sum(b * params[layer] for layer, b in c.items())

    assert drop(chosen) <= budget + 1e-12
    best = min((dict(zip(params, combo)) for combo in itertools.product((4, 8, FLOAT), repeat=len(params))
                if drop(dict(zip(params, combo))) <= budget + 1e-12), key=cost)
    assert cost(chosen) <= 1.25 * cost(best)  # greedy stays close to the brute-force optimum


def test_mixed_config_applies_each_layers_bits():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    cfg = mixed_config(QuantConfig(method="weight-only"), {"0": 4, "2": FLOAT})
    qm = quantize(net, cfg)
    assert qm.quant_layers()["0"].weight_spec.bits == 4
    assert qm.float_layers()["2"] == "left in float by skip/overrides"


def test_sensitivity_table_ranks_4_bits_below_8_bits():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    loaded = LoadedModel(net, "test:cnn", "image", "7", {"spec": "test:cnn"},
                         preprocess=Preprocess(input_size=16, crop_pct=1.0))
    splits = stratified_split(load_data("digits"), seed=0)
    finetune(loaded, splits, FinetuneConfig(strategy="full", epochs=6, lr=2e-2, lr_mult=1, batch_size=32))
    calib = [x for x, _ in make_loader(splits.train, loaded, batch_size=64)][:4]
    val = list(make_loader(splits.val, loaded, batch_size=90))
    rows = layer_sensitivity(loaded.model, QuantConfig(), calib, val, bits=(2, 8))
    assert len(rows) == 3 * 2
    by = {(r.layer, r.bits): r for r in rows}
    for layer in ("0", "3", "7"):
        assert by[(layer, 8)].sqnr_db > by[(layer, 2)].sqnr_db + 10
        assert by[(layer, 8)].accuracy_drop < 0.02


def test_search_stops_at_the_first_trial_within_budget_and_reuses_the_cache(tmp_path):
    from finequant.tuning.search import Trial, choose, search, trials_front

    trials = [Trial(f"t{i}", QuantConfig(weight_bits=b)) for i, b in enumerate((2, 4, 6, 8))]
    drops = {2: 5.0, 4: 0.8, 6: 0.3, 8: 0.1}
    calls = []

    def evaluate(t):
        calls.append(t.name)
        b = t.config.weight_bits
        return {"val_accuracy": 0.9 - drops[b] / 100, "val_drop_pt": drops[b], "latency_ms": float(b),
                "packed_bytes": 100 * b}

    kw = dict(within_budget=lambda r: r["val_drop_pt"] <= 0.5, budget_trials=10, cache_dir=tmp_path, context={},
              log=lambda m: None)
    done = search(trials, evaluate, **kw)
    assert [t["name"] for t in done] == ["t0", "t1", "t2"] and calls == ["t0", "t1", "t2"]  # t3 never ran
    assert choose(done, "latency")["name"] == "t2"
    assert search(trials, evaluate, **kw) == done and len(calls) == 3  # resumed entirely from the cache
    assert set(trials_front(done)) == {"t0", "t1", "t2"}  # each trades accuracy for speed
    assert len(search(trials, evaluate, **{**kw, "budget_trials": 1})) == 1
