import pickle

import pytest
import torch
from safetensors.torch import save_file

from finequant.errors import ModelError, SpecError, UntrustedFileError
from finequant.models import load_artifact, load_model, save_artifact


def test_timm_spec_new_head_and_preprocess():
    m = load_model("timm:resnet18", pretrained=False, num_classes=5)
    assert m.head_name == "fc" and m.num_classes == 5
    assert m.new_keys == ["fc.weight", "fc.bias"]
    assert m.preprocess.input_size == 224 and m.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert m.model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_torchvision_spec_finds_last_linear():
    m = load_model("torchvision:mobilenet_v3_small", pretrained=False, num_classes=3, classes=["a", "b", "c"])
    assert m.head_name == "classifier.3" and m.classes == ["a", "b", "c"]
    assert m.model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize("spec,hint", [("timm:resnet1", "resnet18"), ("tim:resnet18", "timm"),
                                       ("effnet_lite0", "efficientnet_lite0"), ("", "empty")])
def test_spec_typos_suggest_names(spec, hint):
    with pytest.raises(SpecError, match=hint):
        load_model(spec, pretrained=False)


def test_bundled_efficientnet_lite0_classifies_espresso():
    from PIL import Image
    from skimage import data

    from finequant.data.transforms import image_transform

    m = load_model("efficientnet_lite0")
    assert sum(p.numel() for p in m.model.parameters()) == pytest.approx(4.65e6, rel=0.01)
    x = image_transform(m.preprocess)(Image.fromarray(data.coffee()))[None]
    with torch.no_grad():
        probs = m.model(x).softmax(-1)[0]
    assert probs.argmax().item() == 967  # ImageNet 'espresso'
    assert probs[967] > 0.8


def test_bundled_minilm_embeds_paraphrases_closer():
    m = load_model("minilm")
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    enc = m.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        e = torch.nn.functional.normalize(m.model.forward_features(**enc), dim=-1)
    assert (e[0] @ e[1]) > (e[0] @ e[2]) + 0.3
    assert m.model(**enc).shape == (3, 2)


def test_artifact_round_trip_is_exact(tmp_path):
    m = load_model("timm:resnet18", pretrained=False, num_classes=4, classes=list("abcd"))
    m.preprocess = m.preprocess.with_size(64)
    save_artifact(m, tmp_path / "art")
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["model.json", "model.safetensors"]
    back = load_artifact(tmp_path / "art")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(m.model.eval()(x), back.model(x))
    assert back.classes == list("abcd") and back.preprocess.input_size == 64
    assert load_model(f"file:{tmp_path / 'art'}").num_classes == 4


def test_text_artifact_round_trip(tmp_path):
    m = load_model("minilm", num_classes=3)
    save_artifact(m, tmp_path / "t")
    back = load_artifact(tmp_path / "t")
    enc = m.tokenizer(["good film", "bad"], padding=True, return_tensors="pt")
    torch.testing.assert_close(m.model.eval()(**enc), back.model(**enc))


def test_local_weights_take_head_size_from_file(tmp_path):
    src = load_model("timm:resnet18", pretrained=False, num_classes=7)
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, tmp_path / "w.safetensors")
    m = load_model("timm:resnet18", weights=tmp_path / "w.safetensors")
    assert m.num_classes == 7 and m.new_keys == []
    m2 = load_model(f"file:{tmp_path / 'w.safetensors'}", arch="timm:resnet18", num_classes=2)
    assert m2.num_classes == 2 and m2.new_keys == ["fc.weight", "fc.bias"]
    with pytest.raises(SpecError, match="--arch"):
        load_model(f"file:{tmp_path / 'w.safetensors'}")
    with pytest.raises(ModelError, match="do not fit the architecture"):
        load_model("timm:resnet34", weights=tmp_path / "w.safetensors")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": _Evil(str(target))}, f)
    with pytest.raises(UntrustedFileError, match="arbitrary code"):
        load_model("timm:resnet18", weights=tmp_path / "evil.pt")
    assert not target.exists()


def test_python_factory_needs_trust(tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch\ndef create():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))\n")
    with pytest.raises(UntrustedFileError, match="--trust-remote-code"):
        load_model(f"file:{tmp_path / 'net.py'}:create")
    m = load_model(f"file:{tmp_path / 'net.py'}:create", trust_remote_code=True)
    assert m.head_name == "1" and m.num_classes == 3


def test_heads_of_every_shape_are_replaced():
    """A 1x1-conv head (SqueezeNet), a distilled model's two heads (DeiT), and the input size from the model."""
    from finequant.models import load_model

    sq = load_model("torchvision:squeezenet1_1", pretrained=False, num_classes=5)
    assert sq.head_name == "classifier.1" and sq.num_classes == 5
    assert sq.model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    deit = load_model("timm:deit_tiny_distilled_patch16_224", pretrained=False, num_classes=3)
    assert deit.head_name == "head" and deit.extra_heads == ["head_dist"] and deit.preprocess.input_size == 224
    assert deit.model.head_dist.out_features == 3 and set(deit.new_keys) >= {"head.weight", "head_dist.weight"}
    deit.model.eval()
    with torch.no_grad():
        assert deit.model(torch.randn(1, 3, 224, 224)).shape == (1, 3)
