"""Vision runtime benchmark at native sizes: finequant int8 on every runtime against fairly configured peers.

Models, each at its own input size (224 px): EfficientNet-Lite0 fine-tuned on mnist5k (bundled ImageNet weights,
last-layer probe at 224 px unless ``--run`` names a finequant run; test accuracy on its 1,000 test images), and
ResNet-50, MobileNetV3-large and DeiT-tiny with random weights (BatchNorm statistics from data; speed only).
Every contender gets the same 8 calibration batches of 16 and is timed in one process, in alternating blocks
(2 threads):

- fp32 eager PyTorch, ONNX Runtime fp32 (the clean fp32 export);
- finequant static int8 (defaults) on ONNX Runtime, made for PyTorch (``QuantConfig(runtime="torch-inductor")``:
  torch.export + torch.compile, oneDNN int8) on PyTorch, and made for OpenVINO (``QuantConfig(runtime="openvino")``)
  on OpenVINO (when installed);
- ONNX Runtime ``quantize_static``, the pt2e flow (torchao ``X86InductorQuantizer`` + ``torch.compile``) and
  NNCF + OpenVINO (when installed), each configured as ``benchmarks/peers.py`` says.

    .venv/bin/python benchmarks/runtime.py [--run runs/lite0-224] [--only resnet50]

Writes benchmarks/results/runtime.json and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finequant.cpu import cpu_description
from finequant.data import load_data, make_loader, stratified_split
from finequant.models import load_artifact, load_model
from finequant.quant import QuantConfig, quantize
from finequant.runtime.backends import Runner, open_runner
from finequant.runtime.bench import measure_side_by_side
from finequant.runtime.exporters import export
from finequant.runtime.ort import integer_ops, optimized_ops, run, session
from finequant.train import FinetuneConfig, finetune
from peers import PEER_SETTINGS, nncf_openvino, ort_quantize_static, pt2e_x86_inductor
from zoo import random_vision_model

BATCHES = (1, 16)
CALIB_BATCHES = 8
RANDOM = ("torchvision:resnet50", "timm:mobilenetv3_large_100", "timm:deit_tiny_patch16_224")


def fine_tuned_lite0(run: Path | None) -> tuple[Any, list[torch.Tensor], list[tuple[np.ndarray, np.ndarray]]]:
    """EfficientNet-Lite0 on mnist5k at 224 px: ``(loaded, calibration batches, test batches)``."""
    splits = stratified_split(load_data("mnist5k"), seed=0)
    if run is not None:
        loaded = load_artifact(run / "model")
    else:
        loaded = load_model("efficientnet_lite0")
        finetune(loaded, splits, FinetuneConfig(strategy="last-layer", image_size=224, seed=0))
    calib = [x for x, _ in make_loader(splits.train, loaded, batch_size=16, shuffle=True)][:CALIB_BATCHES]
    test = [(x.numpy(), y.numpy()) for x, y in make_loader(splits.test, loaded, batch_size=50)]
    return loaded, calib, test


def torch_runner(model: torch.nn.Module) -> Runner:
    model.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return Runner("torch", predict, None)


def ort_runner(path: Path, threads: int) -> Runner:
    sess = session(path, threads=threads, spin=False)
    return Runner("onnxruntime", lambda x: run(sess, x), path)


PAIRS = (("finequant int8 (ORT)", "ORT quantize_static"),
         ("finequant int8 (torch-inductor)", "pt2e X86InductorQuantizer + torch.compile"),
         ("finequant int8 (OpenVINO)", "NNCF + OpenVINO"))
"""finequant on a runtime and its peer on the same runtime."""


def correct(runner: Runner, test: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Whether each test image is classified right."""
    return np.concatenate([runner.predict(x).argmax(1) == y for x, y in test])


def paired(ours: np.ndarray, peer: np.ndarray) -> dict[str, float]:
    """Test images only finequant / only the peer classifies right, and McNemar's exact two-sided p-value: whether
    an accuracy difference is more than the chance of a few images near the decision boundary."""
    a, b = int((ours & ~peer).sum()), int((~ours & peer).sum())
    n, k = a + b, min(a, b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"only_finequant": a, "only_peer": b, "mcnemar_p": p}


def bench_model(name: str, loaded: Any, calib: list[torch.Tensor], test: list | None, threads: int,
                work: Path) -> dict[str, Any]:
    contenders: dict[str, Runner] = {"fp32 eager PyTorch": torch_runner(loaded.model)}
    notes: dict[str, str] = {}
    fp32 = work / f"{name}.fp32.onnx"
    export(loaded, fp32)
    contenders["ORT fp32"] = ort_runner(fp32, threads)
    t0 = time.perf_counter()
    qm = quantize(loaded, QuantConfig(calib_batches=CALIB_BATCHES), calib)
    ours = work / f"{name}.int8.onnx"
    report = export(qm, ours, loaded=loaded)
    notes["finequant int8"] = (f"quantize + export {time.perf_counter() - t0:.1f} s; ORT integer ops "
                               f"{integer_ops(optimized_ops(ours, work))}; simulation explains "
                               f"{report['simulation']['explained']:.0%} of what int8 changes in the file")
    contenders["finequant int8 (ORT)"] = ort_runner(ours, threads)
    # made for torch-inductor (QuantConfig.runtime): points where oneDNN's int8 convolutions quantize
    for_inductor = quantize(loaded, QuantConfig(calib_batches=CALIB_BATCHES, runtime="torch-inductor"), calib)
    inductor = open_runner(for_inductor, "torch-inductor", threads, loaded=loaded)
    contenders["finequant int8 (torch-inductor)"] = inductor
    if importlib.util.find_spec("openvino") is not None:
        # made for OpenVINO (QuantConfig.runtime): the int8 points that pay there
        for_ov = quantize(loaded, QuantConfig(calib_batches=CALIB_BATCHES, runtime="openvino"), calib)
        contenders["finequant int8 (OpenVINO)"] = open_runner(for_ov, "openvino", threads, loaded=loaded,
                                                              workdir=work / f"{name}.openvino")
    else:
        notes["OpenVINO"] = "not installed (pip install 'finequant[openvino]')"
    calib_np = [x.numpy() for x in calib]
    peers = (("ORT quantize_static", lambda: ort_runner(ort_quantize_static(fp32, work / f"{name}.ort.onnx",
                                                                           calib_np), threads)),
             ("pt2e X86InductorQuantizer + torch.compile", lambda: pt2e_x86_inductor(loaded.model, calib)),
             ("NNCF + OpenVINO", lambda: nncf_openvino(fp32, calib_np, threads, transformer="deit" in name)))
    for label, make in peers:
        t0 = time.perf_counter()
        try:
            runner = make()
            for b in BATCHES:  # compiles lazily (pt2e): a failure there is the peer's too
                runner.predict(np.repeat(calib[0][:1].numpy(), b, axis=0))
            contenders[label] = runner
            notes[label] = f"quantized (and compiled for batch {' and '.join(map(str, BATCHES))}) in " \
                           f"{time.perf_counter() - t0:.1f} s"
        except ImportError as e:
            notes[label] = f"not installed ({e.name})"
        except Exception as e:  # report, keep going: one contender failing must not hide the others
            traceback.print_exc()
            notes[label] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    rows: dict[str, dict[str, Any]] = {label: {"file_bytes": r.file_bytes} for label, r in contenders.items()}
    for b in BATCHES:
        x = np.repeat(calib[0][:1].numpy(), b, axis=0)
        for r in contenders.values():  # compile each batch shape before timing (the inductor contenders)
            r.predict(x)
        timed = measure_side_by_side(contenders, x, warmup=2, rounds=30 if b == 1 else 10, cycles=5)
        for label, stats in timed.items():
            rows[label][f"batch{b}"] = stats
    notes["torch-inductor compile"] = ", ".join(f"{k} {v:.0f}" for k, v in inductor.info["compile"].items())
    right = {label: correct(runner, test) for label, runner in contenders.items()} if test is not None else {}
    for label, ok in right.items():
        rows[label]["test_accuracy"] = float(ok.mean())
    for ours, peer in PAIRS:
        if ours in right and peer in right:
            rows[ours]["paired_vs_peer"] = paired(right[ours], right[peer])
    for label in contenders:
        print(f"{name} | {label}: " + ", ".join(f"b{b} {rows[label][f'batch{b}']['p50_ms']:.2f} ms" for b in BATCHES)
              + (f", acc {rows[label]['test_accuracy']:.4f}" if test is not None else ""), flush=True)
    inductor.close()
    return {"rows": rows, "notes": notes, "input_size": loaded.preprocess.input_size}


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = ["# Runtime benchmarks (vision, native input sizes)", "",
             f"`benchmarks/runtime.py` on {results['cpu']}, {results['threads']} threads, {results['date']}. Median "
             "latency in ms; contenders timed in alternating blocks (5 blocks, 30 runs at batch 1, 10 at batch 16, "
             "2 warm-up runs per block, compilation done before). Ratios: latency / fp32 eager PyTorch, and finequant "
             "on a runtime / its peer on the same runtime. Peers, as configured:", ""]
    lines += [f"- {k}: {v}" for k, v in PEER_SETTINGS.items()] + [""]
    for name, res in results["models"].items():
        rows = res["rows"]
        eager = rows["fp32 eager PyTorch"]
        lines += [f"## {name} ({res['input_size']} px)", "",
                  "| variant | test acc | b1 ms | b16 ms | vs eager b1 | vs eager b16 | file MB |", "|---|---|---|---|---|---|---|"]
        for label, r in rows.items():
            b1, b16 = r["batch1"]["p50_ms"], r["batch16"]["p50_ms"]
            acc = f"{r['test_accuracy']:.4f}" if "test_accuracy" in r else "-"
            size = "-" if r["file_bytes"] is None else f"{r['file_bytes'] / 1e6:.2f}"
            lines.append(f"| {label} | {acc} | {b1:.2f} | {b16:.2f} | {b1 / eager['batch1']['p50_ms']:.2f} | "
                         f"{b16 / eager['batch16']['p50_ms']:.2f} | {size} |")
        lines.append("")
        for a, b in PAIRS:
            if a in rows and b in rows:
                pair = rows[a].get("paired_vs_peer")
                lines.append(f"- {a} / {b}: " + " / ".join(
                    f"{rows[a][f'batch{n}']['p50_ms'] / rows[b][f'batch{n}']['p50_ms']:.2f} at b{n}" for n in BATCHES)
                    + ("" if pair is None else f"; test images only finequant / only the peer classifies right: "
                       f"{pair['only_finequant']} / {pair['only_peer']} (McNemar exact p = {pair['mcnemar_p']:.2f})"))
        lines += [f"- {k}: {v}" for k, v in res["notes"].items()] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path, help="a finequant run fine-tuned at 224 px (default: fine-tune one here)")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "runtime.json")
    ap.add_argument("--markdown", type=Path, default=Path(__file__).parent.parent / "docs" / "benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"threads": args.threads, "date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(),
                               "peers": PEER_SETTINGS, "models": {}}
    if args.only and args.json.is_file():
        results["models"] = json.loads(args.json.read_text()).get("models", {})
    wanted = lambda name: not args.only or any(o in name for o in args.only)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        if wanted("efficientnet_lite0"):
            loaded, calib, test = fine_tuned_lite0(args.run)
            results["models"]["efficientnet_lite0 fine-tuned on mnist5k"] = bench_model(
                "efficientnet_lite0", loaded, calib, test, args.threads, Path(tmp))
        for spec in RANDOM:
            if wanted(spec):
                loaded, calib = random_vision_model(spec, CALIB_BATCHES, batch_size=16)
                results["models"][f"{spec} (random weights: speed only)"] = bench_model(
                    spec.split(":")[1], loaded, calib, None, args.threads, Path(tmp))
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
            write_markdown(results, args.markdown)
    print(f"wrote {args.json} and {args.markdown}")


if __name__ == "__main__":
    main()
