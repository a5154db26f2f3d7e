"""``finequant run``: YAML validation, steps, resume by config hash; ``finequant report``."""

import base64
import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from finequant.cli import app
from finequant.pipeline import load_pipeline
from finequant.errors import ConfigError

runner = CliRunner()

TINY = {
    "finetune": {"model": "timm:test_efficientnet", "data": "digits", "max_samples": 300, "pretrained": False,
                 "config": {"strategy": "full", "epochs": 1, "image_size": 32}},
    "quantize": {"int8": {"method": "static", "calib_batches": 2}},
    "export": {"format": "onnx"},
    "bench": {"backends": ["onnxruntime"], "batch": [1]},
}


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("doc,message", [
    ({"finetune": {}, "quantise": {}}, r"unknown key\(s\) \['quantise'\]; allowed: out, finetune, quantize"),
    ({"finetune": {"modle": "x"}, "quantize": {"a": {}}}, r"unknown finetune key\(s\) \['modle'\]"),
    ({"finetune": {"config": {"epochz": 1}}, "quantize": {"a": {}}}, r"epochz"),
    ({"quantize": {"a": {"method": "statc"}}}, r"Did you mean 'static'"),
    ({"quantize": {"a": {}}, "export": {"format": "tflite"}}, r"export.format='tflite': allowed values are onnx, onnx-dynamic, onnx-fp32, onnx-qdq, pt2"),
    ({"finetune": {}}, r"add a 'quantize' \(variants\) or 'tune' section"),
    ({"quantize": {"a": {}}, "bench": {"batch": "1,16"}}, r"bench.batch='1,16': expected list\[int\]"),
])
def test_pipeline_yaml_errors_name_the_key_and_the_allowed_values(tmp_path, doc, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline(_write(tmp_path, doc))


def test_yaml_is_read_with_safe_load(tmp_path):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    path.write_text(f"out: !!python/object/apply:os.system ['touch {marker}']\nquantize: {{a: {{}}}}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(path)
    assert not marker.exists()


def test_examples_are_valid():
    examples = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))
    assert len(examples) == 2  # vision and text, found from any working directory
    for path in examples:
        assert load_pipeline(path).quantize


def test_pipeline_runs_resumes_and_reports(tmp_path):
    doc = {**TINY, "out": str(tmp_path / "run")}
    result = runner.invoke(app, ["run", str(_write(tmp_path, doc))])
    assert result.exit_code == 0, result.output
    out = tmp_path / "run"
    for step in ("finetune", "quantize/int8", "export/quantize-int8", "bench"):
        assert json.loads((out / step / "step.json").read_text())["hash"]
    assert (out / "export" / "quantize-int8" / "model.onnx").stat().st_size > 0
    again = runner.invoke(app, ["run", str(_write(tmp_path, doc))])
    assert again.exit_code == 0 and again.output.count("unchanged, skipped") == 4
    doc["quantize"]["int8"]["observer"] = "percentile"  # only this variant and what reads it rerun
    third = runner.invoke(app, ["run", str(_write(tmp_path, doc))])
    assert third.exit_code == 0
    assert "finetune: unchanged, skipped" in third.output and "quantize/int8: unchanged" not in third.output
    assert "bench: unchanged" not in third.output

    html = (out / "report.html").read_text()
    _check_report(html, out)


def _check_report(html: str, out: Path) -> None:
    images = re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([^']+)'>", html)
    captions = {c for c, _ in images}
    assert {"accuracy vs latency, batch 1 (ms)", "accuracy vs size (MB)", "training curves",
            "confusion matrix"} <= captions
    for _, data in images:
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "src='http" not in html and "<script" not in html  # self-contained
    for section in ("Variants", "Environment", "Configs"):
        assert f"<h2>{section}</h2>" in html
    assert "run/quantize/int8" in html and "run/finetune (fp32)" in html
    md = (out / "report.md").read_text()
    assert "| variant |" in md and all((out / p).is_file() for p in re.findall(r"\]\((report-assets/[^)]+)\)", md))
