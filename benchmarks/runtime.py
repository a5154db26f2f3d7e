"""Side-by-side runtime benchmark: one process, the same model and calibration data for every contender.

Contenders: fp32 eager PyTorch; ONNX Runtime fp32; finequant int8 (our qparams, QDQ) on ONNX Runtime;
ONNX Runtime's own ``quantize_static`` (MinMax and Entropy) on the same fp32 ONNX; OpenVINO (+NNCF)
when installed; torch.ao eager/FX int8 when it runs. Models: the fine-tuned EfficientNet-Lite0 ->
mnist5k run (accuracy + speed) and torchvision ResNet-18 at 224 px (speed; random weights).
Writes benchmarks/results/runtime.json and docs/benchmarks.md.
Run: ``.venv/bin/python benchmarks/runtime.py --run runs/transfer/vision/lp-ft``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finequant.data import load_data, make_loader, stratified_split
from finequant.models import load_artifact, load_model
from finequant.quant import QuantConfig, quantize
from finequant.runtime.backends import Runner
from finequant.runtime.bench import measure_side_by_side
from finequant.runtime.onnx_qdq import export_float, export_qdq
from finequant.runtime.ort import integer_ops, optimized_ops, run, session
from peers import ort_quantize_static

BATCHES = (1, 16)


def torch_runner(model: torch.nn.Module) -> Runner:
    model.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return Runner("torch", predict, None)


def ort_runner(path: Path, threads: int) -> Runner:
    sess = session(path, threads=threads, spin=False)
    return Runner("onnxruntime", lambda x: run(sess, x), path)


def accuracy(runner: Runner, test: list[tuple[np.ndarray, np.ndarray]]) -> float:
    correct = sum(int((runner.predict(x).argmax(1) == y).sum()) for x, y in test)
    return correct / sum(len(y) for _, y in test)


def bench_model(name: str, loaded, calib_loader, test, threads: int, work: Path) -> dict[str, Any]:
    size = loaded.preprocess.input_size
    example = torch.randn(1, 3, size, size)
    calib_np = [x.numpy() for x, _ in calib_loader][:16]
    fp32 = work / f"{name}.fp32.onnx"
    export_float(loaded.model, example, fp32)
    contenders: dict[str, Runner] = {"fp32 eager PyTorch": torch_runner(loaded.model),
                                     "ORT fp32": ort_runner(fp32, threads)}
    t0 = time.perf_counter()
    qm = quantize(loaded, QuantConfig(calib_batches=16), calib_loader)
    ours = work / f"{name}.finequant-int8.onnx"
    export_qdq(qm, example, ours)
    notes = {"finequant int8 (ORT)": f"quantize+export {time.perf_counter() - t0:.1f} s; ORT integer ops "
                                     f"{integer_ops(optimized_ops(ours, work))}"}
    contenders["finequant int8 (ORT)"] = ort_runner(ours, threads)
    # ORT's defaults quantize every op type it supports; "Conv/Gemm only" matches what finequant quantizes.
    for method, ops in (("MinMax", None), ("Entropy", None), ("MinMax", ["Conv", "Gemm"])):
        label = f"ORT quantize_static {method}" + (" (Conv/Gemm only)" if ops else "")
        t0 = time.perf_counter()
        try:
            path = ort_quantize_static(fp32, work / f"{name}.ort-{method}-{bool(ops)}.onnx", calib_np, method, ops)
            contenders[label] = ort_runner(path, threads)
            notes[label] = f"calibration {time.perf_counter() - t0:.1f} s"
        except Exception as e:  # report, keep going: one contender failing must not hide the others
            notes[label] = f"failed: {type(e).__name__}: {str(e)[:200]}"
    try:
        import openvino as ov

        compiled = ov.Core().compile_model(str(ours), "CPU", {"INFERENCE_NUM_THREADS": threads})
        contenders["OpenVINO (finequant int8 ONNX)"] = Runner("openvino", lambda x: compiled(x)[0], ours)
    except ImportError:
        notes["OpenVINO"] = "not installed (pip install 'finequant[openvino]')"
    try:
        contenders["torch.ao FX int8 (x86)"] = torch_runner(_torch_ao_int8(loaded.model, example, calib_np))
    except Exception as e:
        notes["torch.ao FX int8 (x86)"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    rows: dict[str, dict[str, Any]] = {label: {"file_bytes": r.file_bytes} for label, r in contenders.items()}
    for b in BATCHES:
        x = np.repeat(calib_np[0][:1], b, axis=0)
        timed = measure_side_by_side(contenders, x, rounds=50 if b == 1 else 20)
        for label, stats in timed.items():
            rows[label][f"batch{b}"] = stats
    for label, runner in contenders.items():
        row = rows[label]
        if test is not None:
            row["test_accuracy"] = accuracy(runner, test)
        print(f"{name} | {label}: " + ", ".join(f"b{b} {row[f'batch{b}']['p50_ms']:.2f} ms" for b in BATCHES)
              + (f", acc {row['test_accuracy']:.4f}" if test is not None else ""))
    return {"rows": rows, "notes": notes, "input_size": size}


def _torch_ao_int8(model: torch.nn.Module, example: torch.Tensor, calib: list[np.ndarray]) -> torch.nn.Module:
    """PyTorch's own (deprecated) FX graph-mode int8 path with the x86 backend, for comparison only."""
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (example,))
        with torch.no_grad():
            for x in calib[:8]:
                prepared(torch.from_numpy(x))
        return convert_fx(prepared)


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = ["# Runtime benchmarks", "",
             f"Measured by `benchmarks/runtime.py` on {results['machine']}, {results['date']}. Median (p50) "
             "latency in ms; contenders are timed in alternating blocks (5 blocks each, 50 runs in all at batch 1, "
             "20 at batch 16, 3 warm-up runs before each block; ORT sessions without thread spinning) "
             "so machine drift hits all alike. Ratios are latency / baseline (lower is faster); "
             "`vs ORT q_static` compares with ONNX Runtime's `quantize_static` (MinMax, defaults).", ""]
    for name, res in results["models"].items():
        rows = res["rows"]
        eager, ort32 = rows["fp32 eager PyTorch"], rows["ORT fp32"]
        ort_minmax = rows.get("ORT quantize_static MinMax")
        fp32_size = ort32["file_bytes"]
        lines += [f"## {name} ({res['input_size']} px)", "",
                  "| variant | test acc | b1 ms | b16 ms | vs eager b1 | vs eager b16 | vs ORT fp32 b1 | "
                  "vs ORT fp32 b16 | vs ORT q_static b1 | file MB | size vs fp32 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, r in rows.items():
            b1, b16 = r["batch1"]["p50_ms"], r["batch16"]["p50_ms"]
            acc = f"{r['test_accuracy']:.4f}" if "test_accuracy" in r else "-"
            vs_q = f"{b1 / ort_minmax['batch1']['p50_ms']:.2f}" if ort_minmax else "-"
            size = r["file_bytes"]
            lines.append(
                f"| {label} | {acc} | {b1:.2f} | {b16:.2f} | {b1 / eager['batch1']['p50_ms']:.2f} | "
                f"{b16 / eager['batch16']['p50_ms']:.2f} | {b1 / ort32['batch1']['p50_ms']:.2f} | "
                f"{b16 / ort32['batch16']['p50_ms']:.2f} | {vs_q} | "
                f"{'-' if size is None else f'{size / 1e6:.2f}'} | "
                f"{'-' if size is None else f'{size / fp32_size:.3f}'} |")
        lines += [""] + [f"- {k}: {v}" for k, v in res["notes"].items()] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path, default=Path("runs/transfer/vision/lp-ft"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "runtime.json")
    ap.add_argument("--markdown", type=Path, default=Path(__file__).parent.parent / "docs" / "benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import platform

    results: dict[str, Any] = {"threads": args.threads, "date": time.strftime("%Y-%m-%d"),
                               "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
                               "models": {}}
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    results["machine"] += ", AVX512-VNNI" if "avx512_vnni" in cpuinfo else (", AVX2" if "avx2" in cpuinfo else "")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        eff = load_artifact(args.run / "model")
        splits = stratified_split(load_data("mnist5k"), seed=0)
        calib = make_loader(splits.train, eff, batch_size=16, shuffle=True)
        test = [(x.numpy(), y.numpy()) for x, y in make_loader(splits.test, eff, batch_size=100)]
        try:
            results["models"]["EfficientNet-Lite0 fine-tuned on mnist5k"] = bench_model("efficientnet_lite0", eff,
                                                                                       calib, test, args.threads, work)
            torch.manual_seed(0)
            rn = load_model("torchvision:resnet18", pretrained=False, num_classes=10)
            rn_calib = make_loader(splits.train, rn, batch_size=16, shuffle=True)
            results["models"]["ResNet-18 (torchvision, random weights: speed only)"] = bench_model(
                "resnet18", rn, rn_calib, None, args.threads, work)
        except Exception:
            traceback.print_exc()
            raise
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    write_markdown(results, args.markdown)
    print(f"wrote {args.json} and {args.markdown}")


if __name__ == "__main__":
    main()
