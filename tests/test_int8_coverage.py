"""Transformer-era blocks in int8, and what ships computes what was simulated (issue 13)."""

import numpy as np
import pytest
import torch
from torch import nn

from finequant.models import load_model
from finequant.quant import QuantConfig, quantize
from finequant.quant.artifact import load_quantized, save_quantized
from finequant.runtime.agreement import rel_error, simulation_agreement, simulation_explains
from finequant.runtime.exporters import export
from finequant.runtime.onnx_qdq import export_qdq
from finequant.runtime.ort import integer_ops, optimized_ops, run, session


class _TokenMLP(nn.Module):
    """Linear layers on 3-D inputs (tokens), exported by torch as MatMul + Add, not Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(32, 64), nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(torch.relu(self.a(x))).mean(1))


class _SharedInput(nn.Module):
    """Two convolutions read one tensor (their calibrated input ranges differ), and a residual Add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left, self.right = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        y = torch.relu(self.left(h)) + self.right(h * 3.0) + h
        return self.head(y.mean((2, 3)))


def test_linear_on_tokens_runs_as_an_integer_matmul_and_matches_the_simulation(tmp_path):
    torch.manual_seed(0)
    net = _TokenMLP().eval()
    qm = quantize(net, QuantConfig(), [torch.randn(8, 5, 32) for _ in range(4)])
    x = torch.randn(16, 7, 32)
    _, done = export_qdq(qm, x[:1], tmp_path / "m.onnx")
    assert set(done.values()) == {"int8 QDQ"} and len(done) == 3
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert ops.get("MatMulIntegerToFloat") == 2 and ops.get("QGemm") == 1 and "MatMul" not in ops, ops
    got = run(session(tmp_path / "m.onnx"), x.numpy())
    with torch.no_grad():
        sim, flt = qm.model(x).numpy(), net(x).numpy()
    assert rel_error(got, sim) < 0.01 * rel_error(got, flt)  # the same arithmetic (up to int32 bias rounding)


def test_layers_sharing_an_input_keep_their_own_qparams_and_output_points_are_simulated(tmp_path):
    torch.manual_seed(0)
    net = _SharedInput().eval()
    qm = quantize(net, QuantConfig(), [torch.randn(8, 3, 16, 16) for _ in range(4)])
    layers = qm.quant_layers()
    assert float(layers["left"].act_scale) != float(layers["right"].act_scale)
    # the stem's output feeds a residual Add: ORT needs it quantized, so the simulation quantizes it too
    assert layers["stem"].deployed_out_scale is not None and layers["head"].deployed_out_scale is None
    x = torch.randn(16, 3, 16, 16)
    export_qdq(qm, x[:1], tmp_path / "m.onnx")
    assert integer_ops(optimized_ops(tmp_path / "m.onnx", tmp_path)).get("QLinearConv") == 3
    a = simulation_agreement(qm.model, x, run(session(tmp_path / "m.onnx"), x.numpy()))
    assert a["sim_rel_error"] < 0.02 * a["int8_rel_error"], a


def test_resnet_max_pool_runs_in_int8_and_a_reloaded_model_simulates_the_same_points(tmp_path):
    torch.manual_seed(0)
    loaded = load_model("timm:test_resnet", pretrained=False, num_classes=10)
    s = loaded.preprocess.input_size
    qm = quantize(loaded, QuantConfig(), [torch.randn(4, 3, s, s) for _ in range(2)])
    x = torch.randn(8, 3, s, s)
    export_qdq(qm, x[:1], tmp_path / "m.onnx")
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert "MaxPool" in ops and "Conv" not in ops, ops  # the pool between two quantized points runs on uint8
    a = simulation_agreement(qm.model, x, run(session(tmp_path / "m.onnx"), x.numpy()))
    assert simulation_explains(a) and a["explained"] > 0.9, a
    save_quantized(qm, loaded, tmp_path / "q")
    again, _ = load_quantized(tmp_path / "q")
    assert again.model.get_submodule("conv1.6").deployed_out_scale is not None  # before the MaxPool
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), qm.model(x))


@pytest.mark.parametrize("spec", ["timm:test_vit", "timm:test_convnext"])
def test_transformer_era_models_export_every_linear_in_int8(spec, tmp_path):
    torch.manual_seed(0)
    loaded = load_model(spec, pretrained=False, num_classes=10)
    s = loaded.preprocess.input_size
    qm = quantize(loaded, QuantConfig(), [torch.randn(4, 3, s, s) for _ in range(2)])
    r = export(qm, tmp_path / "m.onnx", loaded=loaded)
    assert r["int8_compute_share"] == 1.0 and not r["float_layers"] and not r["warnings"], r["warnings"]
    assert r["int8_layers"] == sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in loaded.model.modules())
    assert r["size_vs_fp32_weights"] < 0.45  # int8 weights (+ per-channel scales, the float norms)
    assert simulation_explains(r["simulation"]), r["simulation"]
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert ops.get("MatMulIntegerToFloat", 0) >= 8, ops


def test_export_warns_when_most_compute_stays_float(tmp_path, caplog):
    torch.manual_seed(0)
    loaded = load_model("timm:test_vit", pretrained=False, num_classes=10)
    s = loaded.preprocess.input_size
    qm = quantize(loaded, QuantConfig(skip=["blocks"]), [torch.randn(4, 3, s, s) for _ in range(2)])
    with caplog.at_level("WARNING", logger="finequant.runtime.exporters"):
        r = export(qm, tmp_path / "m.onnx", loaded=loaded)
    assert r["int8_compute_share"] < 0.5 and "blocks." in r["float_layers"].__repr__() or r["float_layers"] == {}
    assert "run in int8: the largest float layers are" in caplog.text and "blocks." in caplog.text


class _Attention(nn.Module):
    """nn.MultiheadAttention computes with out_proj's weight itself: that Linear never runs as a module."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


def test_layers_a_parent_computes_with_count_as_float_in_the_export_report(tmp_path):
    from finequant.models.base import LoadedModel

    torch.manual_seed(0)
    net = _Attention().eval()
    loaded = LoadedModel(net, "test:attn", "image", "head", {"spec": "test:attn"})
    qm = quantize(net, QuantConfig(), [torch.randn(4, 6, 64) for _ in range(2)])
    from finequant.runtime.backends import Deployable
    from finequant.runtime.exporters import int8_report

    dep = Deployable(loaded, qm)
    dep.example = lambda batch=1: torch.randn(batch, 6, 64)  # a token batch, not an image
    r = int8_report(dep, {"head": "int8 QDQ"}, 1000)
    assert "attn.out_proj" in r["float_layers"] and "not called as a module" in r["float_layers"]["attn.out_proj"]
    assert "attn.in_proj_weight" in r["float_layers"]  # q/k/v: 3 x 64 x 64 weights, float
    assert r["int8_weight_share"] < 0.1 and r["int8_compute_share"] == 1.0  # out_proj's MACs are invisible
    assert "Conv/Linear weights run in int8" in r["warnings"][0] and "attn.out_proj" in r["warnings"][0]


def test_an_artifact_made_for_a_vnni_cpu_warns_on_an_avx2_one(tmp_path, caplog, monkeypatch):
    import json

    import finequant.quant.artifact as artifact

    torch.manual_seed(0)
    loaded = load_model("timm:test_resnet", pretrained=False, num_classes=10)
    s = loaded.preprocess.input_size
    qm = quantize(loaded, QuantConfig(reduce_range=False), [torch.randn(4, 3, s, s)])
    monkeypatch.setattr(artifact, "cpu_class", lambda: "x86-vnni")
    save_quantized(qm, loaded, tmp_path / "q")
    assert json.loads((tmp_path / "q" / "quant.json").read_text())["cpu"] == "x86-vnni"
    monkeypatch.setattr(artifact, "cpu_class", lambda: "x86-avx2")
    monkeypatch.setattr(artifact, "has_vnni", lambda: False)
    with caplog.at_level("WARNING", logger="finequant.quant.artifact"):
        load_quantized(tmp_path / "q")
    assert "quantized on x86-vnni with 8-bit weights" in caplog.text and "quantize again" in caplog.text


def test_export_says_nothing_when_the_simulation_has_the_files_points_and_warns_when_not(tmp_path, caplog):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 4)).eval()
    qm = quantize(net, QuantConfig(), [torch.randn(4, 3, 16, 16) for _ in range(2)])
    x = torch.randn(2, 3, 16, 16)
    with caplog.at_level("WARNING", logger="finequant.runtime.onnx_qdq"):
        export_qdq(qm, x[:1], tmp_path / "a.onnx")  # its clipped-range point, stored as float32: equal
        assert "differently" not in caplog.text
        qm.quant_layers()["0"].set_deployed_output(None)
        export_qdq(qm, x[:1], tmp_path / "b.onnx")
    assert "1 output quantization point(s) differently" in caplog.text
