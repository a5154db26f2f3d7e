"""The library-first API: the README's Python block, every registry entry, capabilities, config checks."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from finequant import catalog
from finequant.errors import ConfigError, FinequantError
from finequant.quant import QuantConfig, qparams_from_model, quantize, quantize_inference
from finequant.quant.affine import sqnr_db

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_block_runs_as_written(tmp_path, monkeypatch):
    block = re.search(r"## Python API.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    tuned = scope["tuned"]
    assert tuned.chosen and tuned.test["quantized"]["accuracy"] > 0.5
    assert (tmp_path / "model.int8.onnx").stat().st_size > 0


def test_cli_and_package_import_without_torch():
    """`finequant --help` must not pay for torch (4 s cold): the CLI reads configs and the catalog only."""
    code = "import sys, finequant, finequant.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.mark.parametrize("method", catalog.METHODS.names())
def test_every_method_quantizes_saves_and_reloads(method, tmp_path):
    from finequant.models import load_model
    from finequant.quant.artifact import load_quantized, save_quantized

    info = catalog.METHODS.info(method)
    torch.manual_seed(0)
    loaded = load_model("timm:test_efficientnet", pretrained=False, num_classes=4)
    loaded.preprocess = loaded.preprocess.with_size(32)
    calib = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    if info.trained:
        with pytest.raises(ConfigError, match="train_data"):
            quantize(loaded, QuantConfig(method=method), calib)
        return
    qm = quantize(loaded, QuantConfig(method=method, calib_batches=2), calib)
    x = torch.randn(3, 3, 32, 32)
    assert qm.quant_layers(), f"{method} quantized nothing"
    with torch.no_grad():
        assert sqnr_db(loaded.model(x), qm.model(x)) > 8  # random weights, down to 4-bit codebooks: a sanity floor
    # a saved artifact rebuilds exactly; quantize_inference with its qparams gives the same model
    torch.manual_seed(0)
    save_quantized(qm, loaded, tmp_path / "q")
    back, qparams = load_quantized(tmp_path / "q")
    with torch.no_grad():
        torch.testing.assert_close(back.model(x), qm.model(x), atol=1e-5, rtol=1e-5)
        again = quantize_inference(loaded, qparams, QuantConfig(method=method))
        torch.testing.assert_close(again(x), qm.model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [f"{r}:{n}" for r, reg in (("observers", catalog.OBSERVERS),
                                                            ("ptq", catalog.PTQ_STEPS),
                                                            ("strategies", catalog.STRATEGIES),
                                                            ("exporters", catalog.EXPORTERS),
                                                            ("backends", catalog.BACKENDS)) for n in reg])
def test_every_registry_entry_imports(name):
    kind, entry = name.split(":", 1)
    reg = {"observers": catalog.OBSERVERS, "ptq": catalog.PTQ_STEPS, "strategies": catalog.STRATEGIES,
           "exporters": catalog.EXPORTERS, "backends": catalog.BACKENDS}[kind]
    assert callable(reg.get(entry)) and reg.help(entry)


@pytest.mark.parametrize("backend", catalog.BACKENDS.names())
def test_every_backend_runs_an_in_memory_model_or_says_why(backend):
    from finequant.models.base import LoadedModel, Preprocess
    from finequant.runtime.backends import open_runner

    loaded = LoadedModel(_cnn(), "test:cnn", "image", "7", {"spec": "test:cnn"}, preprocess=Preprocess(input_size=8))
    qm = quantize(loaded, QuantConfig(calib_batches=2), [torch.randn(4, 3, 8, 8) for _ in range(2)])
    x = torch.randn(2, 3, 8, 8)
    for model in (loaded, qm):
        try:
            with open_runner(model, backend, loaded=loaded) as runner:
                out = runner.predict(x.numpy())
        except FinequantError as e:
            assert str(e)  # a clear refusal (int8 on eager torch, openvino not installed)
            continue
        with torch.no_grad():
            ref = (qm.model if model is qm else loaded.model)(x).numpy()
        assert out.shape == (2, 4) and float(sqnr_db(torch.from_numpy(ref), torch.from_numpy(out))) > 20


def test_a_backend_added_with_one_entry_works_in_evaluate_bench_and_tune(monkeypatch):
    """One registry entry is all a backend needs: evaluate, bench and tune's latency all go through it."""
    from finequant.data import load_data, stratified_split
    from finequant.models.base import LoadedModel, Preprocess
    from finequant.runtime.backends import torch_sim
    from finequant.runtime.evaluate import bench, evaluate
    from finequant.tuning import TuneConfig, tune

    calls = []

    def counting(dep, workdir, threads):
        runner = torch_sim(dep, workdir, threads)
        inner = runner.predict
        runner.predict = lambda x: calls.append(1) or inner(x)
        return runner

    reg = catalog.BACKENDS
    monkeypatch.setitem(reg._entries, "counting", counting)
    monkeypatch.setitem(reg._help, "counting", "test double")
    monkeypatch.setitem(reg._info, "counting", None)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    loaded = LoadedModel(net, "test:cnn", "image", "4", {"spec": "test:cnn"}, preprocess=Preprocess(input_size=16))
    splits = stratified_split(load_data("digits"), seed=0, max_samples=200)
    loaded.classes = splits.train.classes
    assert evaluate(loaded, splits.test, "counting")["samples"] == len(splits.test) and calls
    n = len(calls)
    assert bench({"m": loaded}, ["counting"], [1])[0]["p50_ms"] > 0 and len(calls) > n
    n = len(calls)
    result = tune(loaded, splits, TuneConfig(backend="counting", max_drop=100, budget_trials=1, calib_batches=1))
    assert result.trials[0]["latency_ms"] > 0 and len(calls) > n


def test_cross_field_validation_names_the_fix():
    with pytest.raises(ConfigError, match="scheme='affine' does not go with method='nonlinear'"):
        QuantConfig(method="nonlinear", scheme="affine")
    assert QuantConfig(method="nonlinear").scheme == "pow2"  # the method's own default
    with pytest.raises(ConfigError, match="observer='mse' has no effect with method='dynamic'"):
        QuantConfig(method="dynamic", observer="mse")
    with pytest.raises(ConfigError, match="weight_observer"):
        QuantConfig(weight_observer="entropy")
    with pytest.raises(ConfigError, match="group_size=0"):
        QuantConfig(group_size=0)


def test_qparams_without_calibration_quantize_every_layer_and_say_so(caplog):
    net = _cnn()
    qp = qparams_from_model(net)  # no data: convolutions cannot get activation ranges
    assert set(qp) == {"0", "3", "7"} and all(q.act_mode == "float" for q in qp.values())
    assert "activations stay float" in caplog.text
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert sqnr_db(net(x), quantize_inference(net, qp)(x)) > 25
    calib = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    static = qparams_from_model(net, calib)
    assert all(q.act_mode == "static" for q in static.values())
    assert all(q.act_mode == "dynamic" for q in qparams_from_model(_mlp()).values())


def test_cli_options_are_the_config_fields():
    from typer.testing import CliRunner

    from finequant.cli import app
    from finequant.quant import QATConfig

    out = CliRunner().invoke(app, ["quantize", "--help"], terminal_width=200).output
    for field in ("--weight-bits", "--act-bits", "--observer", "--reduce-range", "--qat-epochs", "--calib-batches"):
        assert field in out
    assert "[default: 400]" in out and f"[default: {QATConfig().epochs}]" in out
