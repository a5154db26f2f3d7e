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


def test_report_on_a_folder_without_runs_says_so(tmp_path):
    from finequant.errors import FinequantError

    with pytest.raises(FinequantError, match="no summary.json"):
        runner.invoke(app, ["report", str(tmp_path)], catch_exceptions=False)


def test_finetune_then_quantize_cli(tmp_path):
    run = tmp_path / "run"
    args = ["finetune", "--model", "timm:test_efficientnet", "--no-pretrained", "--data", "digits",
            "--strategy", "last-layer", "--epochs", "2", "--image-size", "32", "--max-samples", "300",
            "--out", str(run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    s = json.loads((run / "summary.json").read_text())
    assert s["config"]["finetune"]["strategy"] == "last-layer" and len(s["history"]) == 1  # solved, not stepped
    assert s["history"][0]["probe_l2"] in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert (run / "model" / "model.safetensors").is_file() and not (run / "checkpoint.pt").exists()  # done: removed
    assert s["skipped"] == {"count": 0, "first": []}
    q = tmp_path / "q"
    result = runner.invoke(app, ["quantize", str(run), "--method", "static", "--calib", "4", "--out", str(q)])
    assert result.exit_code == 0, result.output
    s = json.loads((q / "summary.json").read_text())
    assert s["metrics"]["top1_agreement"] > 0.8 and s["metrics"]["samples"] == 60
    assert s["sizes"]["size_ratio"] < 0.35
    assert s["config"]["quantize"]["method"] == "static"
    assert "top-1 agreement" in result.output


def test_eval_bench_export_on_runtimes(tmp_path):
    run, q = tmp_path / "run", tmp_path / "q"
    assert runner.invoke(app, ["finetune", "--model", "timm:test_efficientnet", "--no-pretrained", "--data",
                               "digits", "--strategy", "full", "--epochs", "2", "--image-size", "32",
                               "--max-samples", "300", "--out", str(run)]).exit_code == 0
    assert runner.invoke(app, ["quantize", str(run), "--calib", "4", "--out", str(q)]).exit_code == 0
    sim = runner.invoke(app, ["eval", str(q), "--backend", "torch-sim", "--out", str(tmp_path / "e1")])
    ort = runner.invoke(app, ["eval", str(q), "--backend", "onnxruntime", "--out", str(tmp_path / "e2")])
    assert sim.exit_code == 0 and ort.exit_code == 0, ort.output
    a = json.loads((tmp_path / "e1" / "summary.json").read_text())["metrics"]
    b = json.loads((tmp_path / "e2" / "summary.json").read_text())["metrics"]
    assert a["samples"] == b["samples"] == 60 and abs(a["accuracy"] - b["accuracy"]) <= 0.05
    result = runner.invoke(app, ["bench", str(run), str(q), "--backend", "onnxruntime", "--backend", "torch",
                                 "--batch", "1,4", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b" / "summary.json").read_text())["metrics"]["rows"]
    measured = [r for r in rows if "skipped" not in r]
    assert len(measured) == 6 and all(r["p50_ms"] > 0 and r["throughput_per_s"] > 0 for r in measured)
    assert [r["backend"] for r in rows if "skipped" in r] == ["torch"]  # int8 does not run on eager torch
    int8 = next(r for r in measured if r["model"] == str(q))
    fp32 = next(r for r in measured if r["model"] == str(run) and r["backend"] == "onnxruntime")
    assert int8["file_bytes"] < 0.5 * fp32["file_bytes"]  # tiny model: names and qparams weigh in
    for fmt, name in (("onnx", "m.onnx"), ("pt2", "m.pt2")):
        result = runner.invoke(app, ["export", str(q if fmt == "onnx" else run), "--format", fmt,
                                     "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert "cosine" in result.output and (tmp_path / name).stat().st_size > 0


def test_tune_searches_within_the_budget_and_resumes_from_cached_trials(tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, ["finetune", "--model", "timm:test_efficientnet", "--no-pretrained", "--data",
                               "digits", "--strategy", "full", "--epochs", "2", "--image-size", "32",
                               "--max-samples", "300", "--out", str(run)]).exit_code == 0
    out = tmp_path / "tune"
    args = ["tune", str(run), "--max-drop", "1.0", "--bits", "4", "--bits", "8", "--calib", "2", "--objective", "size",
            "--budget-trials", "4", "--leave-one-out", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    s = json.loads((out / "summary.json").read_text())["metrics"]
    assert (out / "sensitivity.png").stat().st_size > 1000
    n_layers = len(s["leave_one_out"]) // 2  # all-but-one at 4 and at 8 bits
    assert len(s["sensitivity"]) == 2 * n_layers
    assert {r["bits"] for r in s["leave_one_out"]} == {4, 8}
    trials = s["trials"]
    assert 1 <= len(trials) <= 4 and trials[0]["name"].startswith("mixed 4/8-bit")
    # stops at the first trial within the budget; all earlier ones missed it
    assert all(not t["within_budget"] for t in trials[:-1])
    assert trials[-1]["within_budget"] == (len(trials) < 4 or trials[-1]["val_drop_pt"] <= 1.0)
    assert s["chosen"] in [t["name"] for t in trials] and s["pareto"]
    assert all(t["latency_ms"] > 0 and t["packed_bytes"] > 0 for t in trials)
    assert (out / "quant.safetensors").is_file() and len(list((out / "trials").glob("*.json"))) == len(trials)
    again = runner.invoke(app, args)  # a rerun evaluates nothing: every trial comes from the cache
    assert again.exit_code == 0 and again.output.count("(cached)") == len(trials)
    assert json.loads((out / "summary.json").read_text())["metrics"]["chosen"] == s["chosen"]


@pytest.mark.slow  # subprocesses / a real transformer: ~20-60 s
def test_text_models_run_on_onnxruntime_with_integer_matmuls(tmp_path):
    """eval, bench and export take a dynamic-int8 MiniLM to ONNX Runtime's integer kernels."""
    run, q = tmp_path / "run", tmp_path / "q"
    assert runner.invoke(app, ["finetune", "--model", "minilm", "--data", "rotten_tomatoes", "--strategy",
                               "last-layer", "--epochs", "8", "--lr", "0.01", "--max-samples", "500",
                               "--out", str(run)]).exit_code == 0
    assert runner.invoke(app, ["quantize", str(run), "--method", "dynamic", "--out", str(q)]).exit_code == 0
    simulated = json.loads((q / "summary.json").read_text())["metrics"]["quantized"]["accuracy"]
    result = runner.invoke(app, ["eval", str(q), "--backend", "onnxruntime", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    on_ort = json.loads((tmp_path / "e" / "summary.json").read_text())["metrics"]["accuracy"]
    assert abs(on_ort - simulated) <= 0.05
    result = runner.invoke(app, ["bench", str(run), str(q), "--backend", "onnxruntime", "--batch", "1",
                                 "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b" / "summary.json").read_text())["metrics"]["rows"]
    fp32, int8 = rows
    assert int8["file_bytes"] < 0.3 * fp32["file_bytes"]
    result = runner.invoke(app, ["export", str(q), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0 and "cosine" in result.output, result.output
