import json

import pytest
from typer.testing import CliRunner

from finequant.cli import app

runner = CliRunner()
COMMANDS = ["finetune", "quantize", "tune", "eval", "bench", "export", "report", "run", "demo", "models", "data"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_models_lists_sources_and_bundled(tmp_path):
    result = runner.invoke(app, ["models", "--out", str(tmp_path)])
    assert result.exit_code == 0
    for name in ("timm:", "torchvision:", "hf:", "file:", "efficientnet_lite0", "minilm"):
        assert name in result.output
    assert json.loads((tmp_path / "summary.json").read_text())["command"] == "models"


def test_data_inspect_mnist5k_writes_summary(tmp_path):
    result = runner.invoke(app, ["data", "inspect", "mnist5k", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "10 classes" in result.output
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["metrics"]["class_counts"] == {str(i): 500 for i in range(10)}
    assert s["environment"]["versions"]["torch"]


def test_planned_command_says_so_and_fails():
    result = runner.invoke(app, ["report", "x"])
    assert result.exit_code == 2


def test_finetune_then_quantize_cli(tmp_path):
    run = tmp_path / "run"
    args = ["finetune", "--model", "timm:test_efficientnet", "--no-pretrained", "--data", "digits",
            "--strategy", "last-layer", "--epochs", "2", "--image-size", "32", "--max-samples", "300",
            "--out", str(run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    s = json.loads((run / "summary.json").read_text())
    assert s["config"]["finetune"]["strategy"] == "last-layer" and len(s["history"]) == 2
    assert (run / "model" / "model.safetensors").is_file() and (run / "checkpoint.pt").is_file()
    q = tmp_path / "q"
    result = runner.invoke(app, ["quantize", str(run), "--method", "static", "--calib", "4", "--out", str(q)])
    assert result.exit_code == 0, result.output
    s = json.loads((q / "summary.json").read_text())
    assert s["metrics"]["top1_agreement"] > 0.8 and s["metrics"]["samples"] == 60
    assert s["sizes"]["size_ratio"] < 0.35
    assert s["config"]["quantize"]["method"] == "static"
    assert "top-1 agreement" in result.output
