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
