import numpy as np
import onnx
import pytest
import torch
from torch import nn

from finequant.data import load_data, make_loader, stratified_split
from finequant.models.base import LoadedModel, Preprocess
from finequant.quant import QuantConfig, quantize
from finequant.runtime.onnx_qdq import export_float, export_qdq
from finequant.runtime.ort import integer_ops, optimized_ops, run, session
from finequant.train import FinetuneConfig, finetune


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                        nn.Conv2d(32, 64, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    loaded = LoadedModel(net, "test:cnn", "image", "11", {"spec": "test:cnn"},
                         preprocess=Preprocess(input_size=16, crop_pct=1.0))
    splits = stratified_split(load_data("digits"), seed=0)
    result = finetune(loaded, splits, FinetuneConfig(strategy="full", epochs=10, lr=2e-2, lr_mult=1,
                                                                 batch_size=32))
    assert result.metrics["test"]["accuracy"] > 0.9
    qm = quantize(loaded, QuantConfig(), make_loader(splits.train, loaded, batch_size=64, shuffle=True))
    x = torch.cat([b[0] for b in make_loader(splits.test, loaded, batch_size=128)])
    return loaded, qm, x


def test_qdq_export_runs_on_integer_kernels_and_matches_simulation(trained, tmp_path):
    loaded, qm, x = trained
    proto, done = export_qdq(qm, x[:1], tmp_path / "q.onnx")
    assert set(done.values()) == {"int8 QDQ"} and len(done) == 4
    weights = {i.name: i for i in proto.graph.initializer}
    weights.update({n.output[0]: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant"})
    conv_weights = [weights[n.input[0]] for n in proto.graph.node if n.op_type == "DequantizeLinear"
                    and n.input[0] in weights and len(weights[n.input[0]].dims) == 4]
    assert len(conv_weights) == 3 and all(w.data_type == onnx.TensorProto.INT8 for w in conv_weights)
    assert not any(len(w.dims) == 4 and w.data_type == onnx.TensorProto.FLOAT for w in weights.values())
    ops = optimized_ops(tmp_path / "q.onnx", tmp_path)
    ints = integer_ops(ops)
    assert ints.get("QLinearConv", 0) == 3 and sum(ints.values()) >= 4, ops
    assert "Conv" not in ops  # no convolution left in float
    got = run(session(tmp_path / "q.onnx"), x.numpy())
    with torch.no_grad():
        sim = qm.model(x).numpy()
    cos = (got * sim).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(sim, axis=1)
    assert cos.mean() >= 0.999
    top2 = np.sort(sim, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.05 * sim.std()  # disagreement only allowed on near-ties
    assert clear.mean() > 0.9 and (got.argmax(1) == sim.argmax(1))[clear].mean() >= 0.99


def test_torch_inductor_runs_the_int8_model_on_onednn_kernels_as_simulated(trained, caplog):
    """The PyTorch-native int8 path: finequant's qparams (not re-calibrated) in the pt2e form, lowered by
    Inductor to oneDNN int8 convolutions, computing what the simulation computes (also for a model made for
    another runtime, with a warning that says how to make one for this one)."""
    from torch._dynamo.utils import counters

    from finequant.runtime.agreement import simulation_agreement, simulation_explains
    from finequant.runtime.backends import open_runner

    loaded, qm, x = trained
    counters.clear()
    with caplog.at_level("WARNING"), open_runner(qm, "torch-inductor", loaded=loaded) as runner:
        got = runner.predict(x[:32].numpy())
        assert set(runner.info["compile"]) == {"export_s_b32", "compile_s_b32"}
    assert "placed for onnxruntime" in caplog.text and "runtime='torch-inductor'" in caplog.text
    assert counters["inductor"]["qconv_weight_prepack_matcher_count"] == 3  # every Conv on an int8 kernel
    assert counters["inductor"]["qlinear_weight_prepack_matcher_count"] == 1
    a = simulation_agreement(qm.model, x[:32], got)
    assert simulation_explains(a) and a["cosine"] > 0.999, a


def test_torch_inductor_pads_same_padding_before_quantizing_and_computes_as_simulated():
    """timm's TF-style SAME padding: the torch export pads the float tensor and quantizes it after, at the same
    point (one loop in Inductor, as in pt2e's graph, instead of dequantize-pad-quantize), with the same numbers."""
    from timm.layers import Conv2dSame

    from finequant.runtime.agreement import simulation_agreement
    from finequant.runtime.torch_inductor import CompiledInt8, export_int8

    torch.manual_seed(0)
    net = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.ReLU6(), Conv2dSame(8, 8, 3, stride=2, groups=8),
                        nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    qm = quantize(net, QuantConfig(runtime="torch-inductor"), [torch.randn(8, 3, 15, 15) for _ in range(2)])
    x = torch.randn(4, 3, 15, 15)
    pads = [n for n in export_int8(qm, x).graph.nodes if "pad" in str(n.target)]
    assert len(pads) == 2 and not any("dequantize" in str(n.args[0].target) for n in pads), pads
    a = simulation_agreement(qm.model, x, CompiledInt8(qm)(x).numpy())
    assert a["sim_rel_error"] < 0.01 * a["int8_rel_error"], a


def test_float_export_matches_pytorch_with_dynamic_batch(trained, tmp_path):
    loaded, _, x = trained
    export_float(loaded.model, x[:1], tmp_path / "f.onnx")
    got = run(session(tmp_path / "f.onnx"), x[:7].numpy())
    with torch.no_grad():
        np.testing.assert_allclose(got, loaded.model(x[:7]).numpy(), rtol=1e-4, atol=1e-4)


def test_openvino_runs_the_same_int8_onnx(trained, tmp_path):
    ov = pytest.importorskip("openvino")  # optional extra: pip install 'finequant[openvino]'
    _, qm, x = trained
    export_qdq(qm, x[:1], tmp_path / "q.onnx")
    compiled = ov.Core().compile_model(str(tmp_path / "q.onnx"), "CPU")
    got = compiled(x.numpy())[0]
    with torch.no_grad():
        sim = qm.model(x).numpy()
    cos = (got * sim).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(sim, axis=1)
    assert cos.mean() >= 0.999


class _TinyEncoder(nn.Module):
    """Keyword inputs like a Hugging Face model: token ids and a mask, 3-D Linear inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.ff = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.ff(self.embed(input_ids))
        m = attention_mask.unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1))


def test_dynamic_int8_export_runs_integer_matmuls_and_matches_simulation(tmp_path):
    from finequant.runtime.onnx_dynamic import export_dynamic

    torch.manual_seed(0)
    net = _TinyEncoder().eval()
    qm = quantize(net, QuantConfig(method="dynamic"))
    ids = torch.randint(0, 100, (8, 12))
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0
    # dict order differs from the forward signature on purpose (tokenizers do this)
    _, done = export_dynamic(qm, {"attention_mask": mask[:2, :5], "input_ids": ids[:2, :5]}, tmp_path / "m.onnx")
    assert done["ff.0"] == done["ff.2"] == done["head"] == "int8 dynamic (MatMulInteger)"  # the 2-D head too
    assert done["embed"] == "int8 table, rows dequantized after Gather"
    ops = optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert any("Integer" in k or k == "DynamicQuantizeMatMul" for k in ops), ops
    sess = session(tmp_path / "m.onnx")
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]  # other batch and length
    with torch.no_grad():
        want = qm.model(input_ids=ids, attention_mask=mask).numpy()
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() > 0.999


def test_torch_backend_runs_dynamic_int8_linears_on_pytorch_kernels():
    from finequant.runtime.torch_int8 import DynamicInt8Linear, dynamic_int8_model

    torch.manual_seed(0)
    net = _TinyEncoder().eval()
    qm = quantize(net, QuantConfig(method="dynamic"))
    model, done = dynamic_int8_model(qm.model)
    assert isinstance(model.ff[0], DynamicInt8Linear) and done["embed"] == "float with dequantized weight"
    ids = torch.randint(0, 100, (8, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        got, want = model(ids, mask), qm.model(ids, mask)
    cos = torch.nn.functional.cosine_similarity(got, want)
    assert cos.min() > 0.99
