"""Transformer-era blocks in int8, and what ships computes what was simulated (issue 13)."""

import copy

import pytest
import torch
from torch import nn

from finequant.models import load_model
from finequant.models.base import reestimate_batchnorm
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


def test_a_tensor_read_by_several_int8_ops_has_one_point_and_the_residual_add_runs_int8(tmp_path):
    torch.manual_seed(0)
    net = _SharedInput().eval()
    qm = quantize(net, QuantConfig(), [torch.randn(8, 3, 16, 16) for _ in range(4)])
    layers = qm.quant_layers()
    # `left` reads the stem's output as is: the stem's output point, shared with the residual Add;
    # `right` reads stem * 3 (a float op), whose own point differs
    assert layers["left"].input_point == "stem:out" and layers["right"].input_point != "stem:out"
    assert float(layers["left"].act_scale) != float(layers["right"].act_scale)
    x = torch.randn(16, 3, 16, 16)
    proto, _ = export_qdq(qm, x[:1], tmp_path / "m.onnx")
    stem_out = [n for n in proto.graph.node if n.op_type == "Conv"][0].output[0]
    assert sum(n.op_type == "QuantizeLinear" and n.input[0] == stem_out for n in proto.graph.node) == 1
    ints = integer_ops(optimized_ops(tmp_path / "m.onnx", tmp_path))
    assert ints.get("QLinearConv") == 3 and ints.get("QLinearAdd") == 2, ints
    a = simulation_agreement(qm.model, x, run(session(tmp_path / "m.onnx"), x.numpy()))
    assert a["sim_rel_error"] < 0.05 * a["int8_rel_error"], a


def test_resnet_max_pool_runs_in_int8_and_a_reloaded_model_simulates_the_same_points(tmp_path):
    torch.manual_seed(0)
    loaded = load_model("timm:test_resnet", pretrained=False, num_classes=10)
    s = loaded.preprocess.input_size
    qm = quantize(loaded, QuantConfig(), [torch.randn(4, 3, s, s) for _ in range(2)])
    x = torch.randn(8, 3, s, s)
    export_qdq(qm, x[:1], tmp_path / "m.onnx")
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert any("MaxPool" in k for k in ops) and "Conv" not in ops, ops  # the pool runs on uint8 (NHWC)
    a = simulation_agreement(qm.model, x, run(session(tmp_path / "m.onnx"), x.numpy()))
    assert simulation_explains(a) and a["explained"] > 0.9, a
    save_quantized(qm, loaded, tmp_path / "q")
    again, qparams = load_quantized(tmp_path / "q")
    assert qparams.points == qm.points.state() and len(qparams.points) > 10
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


def test_convnext_layer_scale_folds_into_the_mlp_and_gelu_runs_as_one_op(tmp_path):
    """timm ConvNeXt's ``x * gamma`` goes into the MLP's last layer (exact), so no per-channel Mul sits between
    that layer and the residual Add; GELU is one ONNX op, which ONNX Runtime runs fused between int8 layers."""
    from finequant.quant.api import fold_layer_scale

    torch.manual_seed(0)
    net = load_model("timm:convnext_atto", pretrained=False, num_classes=10).model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = net(x)
        folded = copy.deepcopy(net)
        assert fold_layer_scale(folded) == 12 and fold_layer_scale(folded) == 0
        assert torch.allclose(folded(x), want, rtol=1e-4, atol=1e-5)
    qm = quantize(net, QuantConfig(), [torch.randn(4, 3, 64, 64) for _ in range(2)])
    export_qdq(qm, x[:1], tmp_path / "m.onnx")
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert ops.get("Gelu") == 12 and "QLinearMul" not in ops and "Mul" not in ops and "Erf" not in ops, ops


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
    """nn.MultiheadAttention (torchvision's ViT) multiplies by its packed in_proj_weight itself."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


class _ParentLinear(nn.Module):
    """torchvision's Swin attention style: the parent calls F.linear with its child's weight and bias."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj, self.head = nn.Linear(32, 96), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = nn.functional.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(-2, -1) / 32 ** 0.5, dim=-1) @ v
        return self.head(nn.functional.linear(a, self.proj.weight, self.proj.bias).mean(1))


@pytest.mark.parametrize("net_class", [_Attention, _ParentLinear])
def test_layers_a_parent_computes_with_run_int8_in_the_simulation_and_the_file(net_class, tmp_path):
    from finequant.models.base import LoadedModel
    from finequant.runtime.backends import Deployable
    from finequant.runtime.exporters import int8_report

    torch.manual_seed(0)
    net = net_class().eval()
    qm = quantize(net, QuantConfig(), [torch.randn(4, 6, net.head.in_features) for _ in range(2)])
    assert not qm.float_layers() and len(qm.quant_layers()) == 3
    x = torch.randn(8, 6, net.head.in_features)
    _, done = export_qdq(qm, x[:1], tmp_path / "m.onnx")
    assert set(done.values()) == {"int8 QDQ"}, done
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert ops.get("MatMulIntegerToFloat", 0) >= 3 and "MatMul" not in ops, ops  # projections and Q·Kᵀ
    a = simulation_agreement(qm.model, x, run(session(tmp_path / "m.onnx"), x.numpy()))
    assert a["sim_rel_error"] < 0.05 * a["int8_rel_error"], a
    loaded = LoadedModel(net, "test:attn", "image", "head", {"spec": "test:attn"})
    dep = Deployable(loaded, qm)
    dep.example = lambda batch=1: torch.randn(batch, 6, net.head.in_features)  # a token batch, not an image
    r = int8_report(dep, done, 1000)
    assert r["int8_weight_share"] == 1.0 and r["int8_compute_share"] == 1.0 and not r["warnings"], r


def test_a_fused_kernel_that_bypasses_a_layer_keeps_it_float_with_the_reason():
    class Fused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # uses the weight, never the layer or F.linear
            return self.head(torch.addmm(self.proj.bias, x, self.proj.weight.t()))

    qm = quantize(Fused().eval(), QuantConfig(), [torch.randn(4, 8) for _ in range(2)])
    assert "never calling the layer" in qm.float_layers()["proj"] and "head" in qm.quant_layers()


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


def test_the_files_quantization_points_are_the_simulations(tmp_path):
    """Every QuantizeLinear in the file is one of the simulation's activation points, with its exact scale and
    zero point, and every point the simulation uses is in the file."""
    from onnx import numpy_helper

    torch.manual_seed(0)
    loaded = load_model("timm:test_efficientnet", pretrained=False, num_classes=10)  # SE blocks, SiLU
    s = loaded.preprocess.input_size
    qm = quantize(loaded, QuantConfig(), [torch.randn(4, 3, s, s) for _ in range(2)])
    proto, _ = export_qdq(qm, torch.randn(1, 3, s, s))
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
                   if n.op_type == "Constant"})
    in_file = {(float(consts[n.input[1]]), int(consts[n.input[2]])) for n in proto.graph.node
               if n.op_type == "QuantizeLinear"}
    assert in_file == set(qm.points.state().values())


def _torchvision_tiny(name: str):
    import torchvision.models as tv
    from torchvision.models.swin_transformer import SwinTransformer

    return {"squeezenet": lambda: tv.squeezenet1_1(num_classes=10),
            "mobilenet_v3": lambda: tv.mobilenet_v3_small(num_classes=10),
            "densenet": lambda: tv.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10),
            "vit": lambda: tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                                mlp_dim=64, num_classes=10),
            "swin": lambda: SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                            window_size=[4, 4], num_classes=10)}[name]()


@pytest.mark.parametrize("family,size", [("squeezenet", 64), ("mobilenet_v3", 64), ("densenet", 32), ("vit", 32),
                                         ("swin", 32), ("timm:test_efficientnet", 32), ("timm:test_byobnet", 32)])
def test_tiny_configs_of_each_family_run_every_layer_int8_as_simulated(family, size, tmp_path):
    """The fast subset of benchmarks/coverage.py: tiny configs of each architecture family, every Conv/Linear
    int8 on ONNX Runtime's integer kernels, and the simulation contract at batch 16."""
    from finequant.models.base import LoadedModel
    from finequant.runtime.backends import Deployable
    from finequant.runtime.exporters import int8_report

    torch.manual_seed(0)
    if family.startswith("timm:"):
        net = load_model(family, pretrained=False, num_classes=10).model
    else:
        net = _torchvision_tiny(family)
    calib = [torch.randn(4, 3, size, size) for _ in range(4)]
    for m in net.modules():  # torchvision's ViT starts from a zero head (all logits 0)
        if isinstance(m, nn.Linear) and not m.weight.any():
            nn.init.normal_(m.weight, std=0.02)
    reestimate_batchnorm(net, calib)  # BatchNorm statistics from data, as a trained model has them
    qm = quantize(net, QuantConfig(), calib)
    x = torch.randn(16, 3, size, size)
    _, done = export_qdq(qm, x[:1], tmp_path / "m.onnx")
    float_layers = {n for n, r in qm.layers.items() if r["status"] == "float" and r["type"] in ("Conv2d", "Linear")}
    assert set(done.values()) == {"int8 QDQ"} and not float_layers, (done, float_layers)
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert not {"Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm"} & set(ops), ops
    loaded = LoadedModel(net, family, "image", "", {"spec": family})
    dep = Deployable(loaded, qm)
    dep.example = lambda batch=1: torch.randn(batch, 3, size, size)
    assert int8_report(dep, done, 1)["int8_compute_share"] == 1.0
    a = simulation_agreement(qm.model, x, run(session(tmp_path / "m.onnx"), x.numpy()))
    assert simulation_explains(a) and a["cosine"] > 0.999, a
