"""Activation points on tensors (quant/points.py): which ops run int8, and the file rounds what the simulation
rounds."""

import pytest
import torch
from torch import nn

from finequant.quant import QuantConfig, quantize
from finequant.runtime.agreement import simulation_agreement
from finequant.runtime.onnx_qdq import export_qdq
from finequant.runtime.ort import integer_ops, optimized_ops, run, session


class _MobileBlock(nn.Module):
    """The int8 patterns of MobileNetV3/EfficientNet/DenseNet: SiLU, Hardswish, squeeze-excitation (global pool,
    1x1 convs, hard sigmoid gate, Mul), Concat and a residual Add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.se_reduce, self.se_expand = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.branch = nn.Conv2d(16, 8, 1)
        self.project = nn.Conv2d(24, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.silu(self.stem(x))
        h = nn.functional.hardswish(self.dw(x))
        gate = nn.functional.hardsigmoid(self.se_expand(torch.relu(self.se_reduce(
            nn.functional.adaptive_avg_pool2d(h, 1)))))
        h = h * gate
        y = self.project(torch.cat([h, self.branch(x)], dim=1)) + x
        return self.head(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def _quantized(config: QuantConfig = QuantConfig()):
    torch.manual_seed(0)
    net = _MobileBlock().eval()
    return net, quantize(net, config, [torch.randn(8, 3, 16, 16) for _ in range(4)])


def test_squeeze_excitation_silu_hardswish_concat_and_residual_run_on_integer_kernels(tmp_path):
    _, qm = _quantized()
    x = torch.randn(16, 3, 16, 16)
    _, done = export_qdq(qm, x[:1], tmp_path / "m.onnx")
    assert set(done.values()) == {"int8 QDQ"}
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    ints = integer_ops(ops)
    assert ints.get("QLinearConv") == 6 and ints.get("QLinearAdd") == 1, ops
    # SiLU: QLinearSigmoid + QLinearMul; Hardswish and the SE gate: QLinearMul each (their hard sigmoid is float)
    assert ops.get("QLinearSigmoid") == 1 and ops.get("QLinearMul") == 3, ops
    assert ops.get("QLinearGlobalAveragePool") == 2 and ops.get("QLinearConcat") == 1, ops
    assert not {"Conv", "Add", "Sigmoid", "GlobalAveragePool", "Concat"} & set(ops), ops
    a = simulation_agreement(qm.model, x, run(session(tmp_path / "m.onnx"), x.numpy()))
    assert a["sim_rel_error"] < 0.1 * a["int8_rel_error"], a


def test_int8_ops_switches_kinds_of_activation_ops_off(tmp_path):
    _, qm = _quantized(QuantConfig(int8_ops=["add"]))
    x = torch.randn(8, 3, 16, 16)
    export_qdq(qm, x[:1], tmp_path / "m.onnx")
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert ops.get("QLinearAdd") == 1 and not {"QLinearMul", "QLinearSigmoid", "QLinearConcat"} & set(ops), ops
    assert ops.get("QLinearConv") == 6, ops  # each conv's output is still quantized before its float consumer
    a = simulation_agreement(qm.model, x, run(session(tmp_path / "m.onnx"), x.numpy()))
    assert a["sim_rel_error"] < 0.1 * a["int8_rel_error"], a
    with pytest.raises(Exception, match="int8_ops"):
        QuantConfig(int8_ops=["softmax"])


def test_a_model_made_for_openvino_keeps_the_gates_float_and_runs_there_as_simulated(tmp_path):
    """``runtime="openvino"``: Add, Concat and MatMul points only (OpenVINO fuses the gates itself; int8 points
    there block it). The file is still the simulation traced."""
    _, qm = _quantized(QuantConfig(runtime="openvino"))
    x = torch.randn(16, 3, 16, 16)
    export_qdq(qm, x[:1], tmp_path / "m.onnx")
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert ops.get("QLinearAdd") == 1 and ops.get("QLinearConcat") == 1, ops
    assert not {"QLinearMul", "QLinearSigmoid", "QLinearGlobalAveragePool"} & set(ops), ops
    a = simulation_agreement(qm.model, x, run(session(tmp_path / "m.onnx"), x.numpy()))
    assert a["sim_rel_error"] < 0.1 * a["int8_rel_error"], a
    ov = pytest.importorskip("openvino")
    got = ov.Core().compile_model(str(tmp_path / "m.onnx"), "CPU")(x.numpy())[0]
    # OpenVINO's int8 Add/Concat arithmetic is not ORT's: the simulation explains part of it (35% here), the
    # logits agree as `eval` requires on every runtime
    assert simulation_agreement(qm.model, x, got)["cosine"] > 0.999


def test_a_model_made_for_torch_inductor_runs_activations_and_the_residual_add_inside_int8_convolutions():
    """``runtime="torch-inductor"``: points where oneDNN's int8 convolution quantizes, after its post-ops (SiLU,
    Hardswish, the residual Add's ``sum``), and float outputs for float consumers, as X86InductorQuantizer
    places them; the compiled model computes what was simulated."""
    from torch._dynamo.utils import counters

    from finequant.runtime.torch_inductor import CompiledInt8

    _, qm = _quantized(QuantConfig(runtime="torch-inductor"))
    x = torch.randn(16, 3, 16, 16)
    counters.clear()
    got = CompiledInt8(qm)(x).numpy()
    lowered = counters["inductor"]
    assert lowered["qconv_weight_prepack_matcher_count"] == 6 and lowered["qconv2d_binary_lower_count"] == 1, lowered
    assert lowered["qconv_unary_lower_count"] == 5, lowered
    a = simulation_agreement(qm.model, x, got)
    assert a["cosine"] > 0.9999 and a["sim_rel_error"] < 0.01 * a["int8_rel_error"], a


def test_an_in_place_float_activation_between_int8_layers_is_calibrated():
    """timm's BatchNormAct2d runs Hardswish in place: the tensor the next conv reads is the one calibration
    already marked seen for the conv before, with new values; its point must still see them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardswish(inplace=True), nn.Conv2d(8, 4, 3)).eval()
    qm = quantize(net, QuantConfig(int8_ops=[]), [torch.randn(4, 3, 12, 12) for _ in range(2)])
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        assert torch.nn.functional.cosine_similarity(qm.model(x).flatten(), net(x).flatten(), dim=0) > 0.99


def test_calibration_observes_each_tensor_once_and_keys_survive_hooks():
    """A tensor read by several int8 ops has one point; forward hooks that compute on outputs (PTQ captures,
    user instrumentation) do not shift the op counts the points are keyed by."""
    net, qm = _quantized()
    keys, layers = set(qm.points.points), qm.quant_layers()
    assert {"stem:out", "/silu0.sigmoid", "/silu0"} <= keys  # SiLU: its input, its gate, its output
    assert layers["dw"].input_point == layers["branch"].input_point == "/silu0"  # one point, two readers
    x = torch.randn(4, 3, 16, 16)
    seen = []
    with torch.no_grad():
        before = qm.model(x)
        handle = layers["dw"].register_forward_hook(lambda m, a, y: seen.append((y * 2).mean()))
        try:
            after = qm.model(x)
        finally:
            handle.remove()
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert seen and set(qm.points.points) == keys


def test_reparameterizable_blocks_are_fused_before_quantizing(tmp_path):
    """timm's RepVGG blocks (3x3 + 1x1 + identity branches, each with a BatchNorm) become one convolution."""
    from timm.models.byobnet import ByobNet, ByoBlockCfg, ByoModelCfg

    torch.manual_seed(0)
    cfg = ByoModelCfg(blocks=(ByoBlockCfg(type="rep", d=1, c=16, s=2, gs=0, br=1.0),
                              ByoBlockCfg(type="rep", d=2, c=32, s=2, gs=0, br=1.0)), stem_type="rep", stem_chs=16)
    net = ByobNet(cfg, num_classes=4).eval()
    calib = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    qm = quantize(net, QuantConfig(), calib)
    convs = [n for n in qm.quant_layers() if n != "head.fc"]
    assert len(convs) == 4 and not any(isinstance(m, nn.BatchNorm2d) for m in qm.model.modules())  # stem + 3 blocks
    x = torch.randn(8, 3, 32, 32)
    export_qdq(qm, x[:1], tmp_path / "m.onnx")
    assert integer_ops(optimized_ops(tmp_path / "m.onnx", tmp_path)).get("QLinearConv") == 4
    a = simulation_agreement(qm.model, x, run(session(tmp_path / "m.onnx"), x.numpy()))
    assert a["sim_rel_error"] < 0.1 * a["int8_rel_error"], a
