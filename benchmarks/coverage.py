"""Which zoo architectures go through int8 whole, whether what ships computes what was simulated, and how fast
it runs against ONNX Runtime's own quantizer on the same fp32 file.

Vision models: random init at each model's own input size (the loader reads it from the model's config;
EfficientNet-Lite0: the bundled ImageNet weights), BatchNorm statistics re-estimated on the calibration batches
(8 seeded random batches of 4), static W8A8 with finequant's defaults, exported with its QDQ exporter. Text
models: the bundled MiniLM and small random Hugging Face encoders, dynamic int8 (finequant's text default), on
Rotten Tomatoes sentences filling 128 tokens. Per model: layers in int8 and float (with reasons), ONNX Runtime's integer ops, the simulation
contract at batch 1 and 16 (error of ORT vs the simulation, vs float, and the simulation's rounding-flip
noise), cosine(fp32, int8), file size, and ORT latency int8 / fp32 at batch 1 and 8 (alternating blocks)
for finequant and for the ORT peer configured as benchmarks/peers.py says. Random weights make logits small
and near-tied, so rounding flips are larger than on trained models; accuracy figures live in docs/results.md.

    .venv/bin/python benchmarks/coverage.py [--only resnet18 vit_b_16]

Writes benchmarks/results/coverage.json and docs/coverage.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from finequant.cpu import cpu_description
from finequant.models import load_model
from finequant.quant import QuantConfig, quantize
from finequant.runtime.agreement import cosine, simulation_agreement, simulation_explains
from finequant.runtime.backends import Runner, to_numpy
from finequant.runtime.bench import measure_side_by_side
from finequant.runtime.exporters import export
from finequant.runtime.ort import integer_ops, optimized_ops, run, session
from peers import PEER_SETTINGS, ort_quantize_dynamic, ort_quantize_static
from zoo import random_text_folder, random_vision_model, sentence_batches

VISION = ("efficientnet_lite0", "torchvision:resnet18", "torchvision:resnet50", "torchvision:mobilenet_v2",
          "torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0", "torchvision:densenet121",
          "torchvision:squeezenet1_1", "torchvision:convnext_tiny", "torchvision:vit_b_16", "torchvision:swin_t",
          "timm:resnet18", "timm:mobilenetv3_large_100", "timm:efficientnet_b0", "timm:tf_efficientnet_lite0",
          "timm:repvgg_a0", "timm:convnext_atto", "timm:deit_tiny_patch16_224")
SMALL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
             max_position_embeddings=512)
HF_CONFIGS = {  # small random encoders of each family (transformers config class, its arguments)
    "hf:bert": ("BertConfig", SMALL),
    "hf:distilbert": ("DistilBertConfig", dict(dim=256, n_layers=4, n_heads=4, hidden_dim=1024)),
    "hf:roberta": ("RobertaConfig", {**SMALL, "pad_token_id": 0}),
    "hf:albert": ("AlbertConfig", {**SMALL, "embedding_size": 128}),
    "hf:electra": ("ElectraConfig", {**SMALL, "embedding_size": 128}),
    "hf:deberta-v2": ("DebertaV2Config", {**SMALL, "relative_attention": True, "position_buckets": 64}),
}
TEXT = ("minilm", *HF_CONFIGS)
MODELS = VISION + TEXT
THREADS, CALIB_BATCHES, TOKENS = 2, 8, 128


def load(spec: str, work: Path) -> tuple[Any, list[Any], Any]:
    """The model, its calibration batches and a batch maker ``example(batch)``."""
    if spec in TEXT:
        if spec == "minilm":
            loaded = load_model("minilm")
        else:
            cls, kwargs = HF_CONFIGS[spec]
            loaded = load_model(f"hf:{random_text_folder(spec.split(':')[1], cls, kwargs, work)}")
        loaded.set_num_classes(2, ["neg", "pos"])
        example = sentence_batches(loaded, TOKENS)
        return loaded, [], example
    loaded, calib = random_vision_model(spec, CALIB_BATCHES)
    s = loaded.preprocess.input_size
    examples = torch.Generator().manual_seed(1)  # not the calibration batches
    return loaded, calib, lambda b: torch.randn(b, 3, s, s, generator=examples)


def measure(spec: str, work: Path) -> dict:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    loaded, calib, example = load(spec, work)
    text = spec in TEXT
    qm = quantize(loaded, QuantConfig(method="dynamic" if text else "static", calib_batches=CALIB_BATCHES), calib)
    report = export(qm, work / "int8.onnx", loaded=loaded)
    fp32 = export(loaded, work / "fp32.onnx")
    quantize_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if text:
        ort_quantize_dynamic(work / "fp32.onnx", work / "ort.onnx")
    else:
        ort_quantize_static(work / "fp32.onnx", work / "ort.onnx", [c.numpy() for c in calib])
    row = {"model": spec, "task": loaded.task, "input_size": TOKENS if text else loaded.preprocess.input_size,
           "method": qm.config.method, "params_m": sum(p.numel() for p in loaded.model.parameters()) / 1e6,
           "int8_layers": report["int8_layers"], "float_layers": report["float_layers"],
           "int8_compute_share": report["int8_compute_share"], "int8_weight_share": report["int8_weight_share"],
           "size_vs_fp32_onnx": report["bytes"] / fp32["bytes"], "quantize_export_s": quantize_s,
           "ort_quantize_s": time.perf_counter() - t0, "warnings": report["warnings"]}
    sessions = {k: session(work / f"{k}.onnx", threads=THREADS, spin=False) for k in ("fp32", "int8", "ort")}
    for b in (1, 16):
        x = example(b)
        got = run(sessions["int8"], to_numpy(x))
        a = simulation_agreement(qm.model, x, got)
        row[f"simulation_b{b}"] = {**a, "contract_met": simulation_explains(a)}
        row[f"fp32_vs_int8_cosine_b{b}"] = cosine(run(sessions["fp32"], to_numpy(x)), got)
        row[f"fp32_vs_ort_peer_cosine_b{b}"] = cosine(run(sessions["fp32"], to_numpy(x)), run(sessions["ort"],
                                                                                             to_numpy(x)))
    for k in ("int8", "ort"):
        ops = optimized_ops(work / f"{k}.onnx", work)
        row[f"{k}_integer_ops"] = integer_ops(ops)
        row[f"{k}_float_heavy_ops"] = {o: n for o, n in ops.items() if o in (
            "Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm")}
    runners = {k: Runner("onnxruntime", (lambda s: lambda x: run(s, x))(sess), None) for k, sess in sessions.items()}
    for b in (1, 8):
        timed = measure_side_by_side(runners, to_numpy(example(b)), warmup=2, rounds=40 if b == 1 else 20,
                                     cycles=8 if b == 1 else 4)
        row[f"ms_b{b}"] = {k: v["p50_ms"] for k, v in timed.items()}
        row[f"int8_vs_fp32_b{b}"] = timed["int8"]["p50_ms"] / timed["fp32"]["p50_ms"]
        row[f"ort_vs_fp32_b{b}"] = timed["ort"]["p50_ms"] / timed["fp32"]["p50_ms"]
    return row


def _ops(ops: dict[str, int]) -> str:
    short = {"QLinearConv": "Conv", "MatMulIntegerToFloat": "MatMul", "QLinearMatMul": "QMatMul", "QGemm": "Gemm",
             "QLinearAdd": "Add", "QLinearMul": "Mul", "QLinearGlobalAveragePool": "GAP", "MatMulInteger": "MatMulI",
             "DynamicQuantizeMatMul": "DQMatMul", "QLinearSigmoid": "Sigmoid", "QLinearConcat": "Concat",
             "QLinearAveragePool": "AvgPool", "NhwcMaxPool": "MaxPool"}
    return " ".join(f"{short.get(k, k)}{v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))


def write_doc(rows: list[dict], cpu: str, path: Path) -> None:
    lines = [
        "# int8 coverage of zoo architectures (`benchmarks/coverage.py`)", "",
        f"CPU: {cpu}, {THREADS} ONNX Runtime threads. Vision: random init at each model's own input size",
        "(EfficientNet-Lite0: the bundled ImageNet weights), BatchNorm statistics re-estimated on the calibration",
        f"data, static W8A8 calibrated on {CALIB_BATCHES} random batches of 4, finequant's QDQ export. Text: the",
        f"bundled MiniLM and small random encoders, dynamic int8, {TOKENS} tokens. The ORT peer: "
        f"{PEER_SETTINGS['ORT quantize_static']} (text: {PEER_SETTINGS['ORT quantize_dynamic']}).",
        "`sim cos` = cosine(simulation, ORT); `explained` = 1 - err(ORT vs simulation) / err(ORT vs float); the",
        "contract holds when err(ORT vs simulation) <= max(0.1 x err(ORT vs float), 2 x the simulation's",
        "rounding-flip noise). Latency ratios are int8 / fp32 on ORT, measured side by side.", "",
        "| model | int8 / float layers | MACs int8 | ORT integer ops (finequant) | sim cos b16 | explained b1 / b16 "
        "| contract | cos(fp32, int8) finequant / ORT peer | size vs fp32 | finequant b1 / b8 | ORT peer b1 / b8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error'][:150]} |" + " - |" * 9)
            continue
        s1, s16 = r["simulation_b1"], r["simulation_b16"]
        lines.append(
            f"| {r['model']} | {r['int8_layers']} / {len(r['float_layers'])} | {r['int8_compute_share']:.0%} "
            f"| {_ops(r['int8_integer_ops'])} | {s16['cosine']:.5f} | {s1['explained']:.2f} / {s16['explained']:.2f} "
            f"| {'met' if s1['contract_met'] and s16['contract_met'] else 'MISSED'} "
            f"| {r['fp32_vs_int8_cosine_b16']:.4f} / {r['fp32_vs_ort_peer_cosine_b16']:.4f} "
            f"| {r['size_vs_fp32_onnx']:.3f} | {r['int8_vs_fp32_b1']:.2f} / {r['int8_vs_fp32_b8']:.2f} "
            f"| {r['ort_vs_fp32_b1']:.2f} / {r['ort_vs_fp32_b8']:.2f} |")
    groups: dict[tuple[str, str], list[str]] = {}  # (model, reason) -> layers
    for r in rows:
        for n, why in r.get("float_layers", {}).items():
            groups.setdefault((r["model"], why), []).append(n)
    lines += ["", "Layers left float, and why:", ""] + ([
        f"- {m}: {len(names)} layer(s) such as `{names[0]}`: {why}" for (m, why), names in groups.items()]
        or ["- none: every Conv/Linear of every model runs int8"])
    path.write_text("\n".join(lines) + "\n")


def measure_isolated(spec: str) -> dict:
    """``measure(spec)`` in a child process: a model that exhausts memory or crashes the runtime takes only
    its own row with it (and leaves no memory behind for the next model)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        proc = subprocess.run([sys.executable, __file__, "--measure", spec, "--json", str(out)])
        if proc.returncode or not out.is_file():
            return {"model": spec, "error": f"the measuring process ended with code {proc.returncode}"}
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # one model, in this process (see measure_isolated)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "coverage.json")
    ap.add_argument("--doc", type=Path, default=Path(__file__).parents[1] / "docs" / "coverage.md")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    if args.measure:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                row = measure(args.measure, Path(tmp))
            except Exception as e:  # one architecture failing must not hide the others' figures
                traceback.print_exc()
                row = {"model": args.measure, "error": f"{type(e).__name__}: {e}"}
        args.json.write_text(json.dumps(row, default=str))
        return
    old = {}  # with --only, the other models' rows of the last full run are kept
    if args.only and args.json.is_file():
        old = {r["model"]: r for r in json.loads(args.json.read_text())["rows"] if "ms_b1" in r or "error" in r}
    for spec in MODELS:
        if args.only and not any(o in spec for o in args.only):
            continue
        old[spec] = measure_isolated(spec)
        print(json.dumps({k: v for k, v in old[spec].items() if k != "float_layers"}, default=str)[:600], flush=True)
        rows = [old[m] for m in MODELS if m in old]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_description(), "peers": PEER_SETTINGS, "rows": rows}, indent=2,
                                        default=str))
        write_doc(rows, cpu_description(), args.doc)


if __name__ == "__main__":
    main()
