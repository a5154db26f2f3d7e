"""Fuzzing: every spec string or CSV either works or raises finequant's own error, never a raw traceback."""

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finequant.data import load_data
from finequant.errors import FinequantError
from finequant.models import load_model
from finequant.quant import QuantConfig
from finequant.train import FinetuneConfig

text = st.text(alphabet=string.printable, max_size=40)


@settings(max_examples=150, deadline=None)
@given(spec=st.one_of(text, st.builds(lambda p, r: f"{p}:{r}", st.sampled_from(
    ["imagefolder", "csv", "mnist5k", "digits", "nope", ""]), text)))
def test_data_specs_work_or_raise_finequant_errors(spec):
    try:
        load_data(spec)
    except FinequantError:
        pass


@settings(max_examples=100, deadline=None)
@given(spec=st.one_of(text, st.builds(lambda p, r: f"{p}:{r}", st.sampled_from(
    ["timm", "torchvision", "file", "tim", "efficientnet_lite0"]), text)))
def test_model_specs_work_or_raise_finequant_errors(spec):
    # hf: is left out: an unknown name there asks the Hugging Face hub, which needs the network.
    try:
        load_model(spec, pretrained=False)
    except FinequantError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(st.text(max_size=12), min_size=1, max_size=4), max_size=8),
       header=st.lists(st.sampled_from(["text", "label", "image", "x", ""]), min_size=1, max_size=4))
def test_csv_rows_work_or_raise_finequant_errors(tmp_path, rows, header):
    path = tmp_path / "data.csv"
    lines = [",".join(header)] + [",".join(r) for r in rows]
    path.write_bytes("\n".join(lines).encode("utf-8", errors="replace"))
    try:
        load_data(f"csv:{path}")
    except FinequantError:
        pass


@settings(max_examples=100, deadline=None)
@given(config=st.dictionaries(st.sampled_from(["strategy", "epochs", "lr", "augment", "batch_size", "typo",
                                               "lp_epochs", "freeze_blocks"]),
                              st.one_of(st.integers(-3, 5), st.floats(-1, 1), text), max_size=4))
def test_finetune_configs_work_or_raise_finequant_errors(config):
    try:
        FinetuneConfig.from_dict(config)
    except FinequantError:
        pass
    except TypeError:  # a wrong type for a typed field (e.g. epochs="x") is a bug in the caller's YAML
        pytest.fail(f"{config} raised TypeError instead of a ConfigError")


@settings(max_examples=100, deadline=None)
@given(config=st.dictionaries(st.sampled_from(["method", "weight_bits", "granularity", "observer", "skip",
                                               "overrides", "typo"]),
                              st.one_of(st.integers(-3, 20), text, st.lists(text, max_size=2)), max_size=4))
def test_quant_configs_work_or_raise_finequant_errors(config):
    try:
        QuantConfig.from_dict(config)
    except FinequantError:
        pass


yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 9), text),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(text, inner, max_size=3)), max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(yaml_values, st.dictionaries(
    st.sampled_from(["out", "finetune", "quantize", "tune", "export", "bench", "report", "typo"]),
    st.one_of(yaml_values, st.dictionaries(st.sampled_from(["model", "data", "config", "int8", "max_drop",
                                                            "format", "batch", "method"]), yaml_values,
                                           max_size=3)), max_size=5)))
def test_pipeline_yaml_works_or_raises_finequant_errors(tmp_path, doc):
    import yaml

    from finequant.pipeline import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_pipeline(path)
    except FinequantError:
        pass
