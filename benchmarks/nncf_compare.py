"""finequant's tuned int8 vs NNCF (``nncf.quantize`` and ``nncf.quantize_with_accuracy_control``).

Same fine-tuned EfficientNet-Lite0 -> mnist5k run, the same calibration batches (train split) and
the same validation split for accuracy control; test accuracy on the 1,000-image test split; batch-1
latency on ONNX Runtime and OpenVINO, timed side by side in this process. NNCF is not a finequant
dependency: ``pip install nncf openvino`` to run this.
Run: ``.venv/bin/python benchmarks/nncf_compare.py --run runs/transfer/vision/lp-ft --tuned runs/tune/vision-latency``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import onnx

from finequant.workflow import open_source
from finequant.data import make_loader
from finequant.quant import QuantConfig, quantize
from finequant.quant.artifact import load_quantized
from finequant.runtime.backends import Runner, example_input
from finequant.runtime.bench import measure_side_by_side
from finequant.runtime.onnx_qdq import export_float, export_qdq
from finequant.runtime.ort import run, session


def _accuracy(predict, loader) -> float:
    hits = total = 0
    for x, y in loader:
        hits += int((predict(x.numpy()).argmax(1) == y.numpy()).sum())
        total += len(y)
    return hits / total


def main() -> None:
    import nncf
    import openvino as ov

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path, default=Path("runs/transfer/vision/lp-ft"))
    ap.add_argument("--tuned", type=Path, default=Path("runs/tune/vision-latency"))
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "nncf.json")
    args = ap.parse_args()
    src = open_source(args.run)
    loaded, splits = src.loaded, src.splits
    calib = [x for x, _ in make_loader(splits.train, loaded, batch_size=32, shuffle=True, seed=0)][:16]
    val = make_loader(splits.val, loaded, batch_size=100)
    test = make_loader(splits.test, loaded, batch_size=100)
    tmp = Path(tempfile.mkdtemp(prefix="nncf-"))
    fp32 = tmp / "fp32.onnx"
    export_float(loaded.model, example_input(loaded), fp32)
    model = onnx.load(fp32)
    calib_ds = nncf.Dataset([x.numpy() for x in calib], lambda x: {"input": x})
    results, runners = {}, {}

    t0 = time.perf_counter()
    q = nncf.quantize(model, calib_ds, subset_size=len(calib) * 32)
    results["nncf.quantize (ONNX, default preset)"] = {"quantize_s": time.perf_counter() - t0}
    onnx.save(q, tmp / "nncf.onnx")

    val_ds = nncf.Dataset([(x, y) for x, y in val], lambda item: {"input": item[0].numpy()})
    t0 = time.perf_counter()
    qa = nncf.quantize_with_accuracy_control(model, calibration_dataset=calib_ds, validation_dataset=val_ds,
                                             validation_fn=lambda m, data: _validate_items(m, val, tmp),
                                             max_drop=args.max_drop, drop_type=nncf.DropType.ABSOLUTE,
                                             subset_size=len(calib) * 32)
    results["nncf.quantize_with_accuracy_control"] = {"quantize_s": time.perf_counter() - t0}
    onnx.save(qa, tmp / "nncf_ac.onnx")

    ours = quantize(loaded, QuantConfig(), calib)
    export_qdq(ours, example_input(loaded), tmp / "ours.onnx")
    tuned_loaded, _ = load_quantized(args.tuned)
    tuned_cfg = QuantConfig.from_dict(json.loads((args.tuned / "quant.json").read_text())["config"])
    from finequant.quant.api import QuantizedModel

    export_qdq(QuantizedModel(tuned_loaded.model, tuned_cfg), example_input(loaded), tmp / "tuned.onnx")
    core = ov.Core()
    for name, file in (("ORT fp32", "fp32.onnx"), ("finequant static int8 (ORT)", "ours.onnx"),
                       ("finequant tune --objective latency (ORT)", "tuned.onnx"),
                       ("nncf.quantize (ORT)", "nncf.onnx"), ("nncf accuracy control (ORT)", "nncf_ac.onnx"),
                       ("finequant tune (OpenVINO)", "tuned.onnx"), ("nncf.quantize (OpenVINO)", "nncf.onnx"),
                       ("nncf accuracy control (OpenVINO)", "nncf_ac.onnx")):
        if "OpenVINO" in name:
            compiled = core.compile_model(str(tmp / file), "CPU")
            runners[name] = Runner(name, lambda x, c=compiled: c(x)[0], tmp / file)
        else:
            sess = session(tmp / file, spin=False)
            runners[name] = Runner(name, lambda x, s=sess: run(s, x), tmp / file)
    timed = measure_side_by_side(runners, example_input(loaded).numpy(), rounds=60)
    float_acc = _accuracy(runners["ORT fp32"].predict, test)
    for name, r in runners.items():
        results.setdefault(name, {}).update(test_accuracy=_accuracy(r.predict, test), p50_ms=timed[name]["p50_ms"],
                                            file_bytes=r.file_bytes)
        print(f"{name}: acc {results[name]['test_accuracy']:.4f} (float {float_acc:.4f}), "
              f"{timed[name]['p50_ms']:.2f} ms, {r.file_bytes / 1e6:.2f} MB")
    for k in ("nncf.quantize (ONNX, default preset)", "nncf.quantize_with_accuracy_control"):
        print(f"{k}: {results[k]['quantize_s']:.0f} s")
    args.json.write_text(json.dumps({"float_test_accuracy": float_acc, "results": results}, indent=2))


def _validate_items(model: onnx.ModelProto, loader, tmp: Path) -> float:
    """NNCF's validation_fn: accuracy of a candidate ONNX model on the validation split (ORT)."""
    onnx.save(model, tmp / "_val.onnx")
    sess = session(tmp / "_val.onnx")
    return _accuracy(lambda x: run(sess, x), loader)


if __name__ == "__main__":
    main()
