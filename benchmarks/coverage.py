"""Which zoo architectures go through static int8 whole, and whether what ships computes what was simulated.

Each model: random init at its own input size (the loader reads it from the model's config), BatchNorm
statistics re-estimated on the calibration batches, static W8A8
calibrated on 4 seeded random batches of 4, exported with finequant's QDQ exporter and run on ONNX
Runtime. Per model: layers in int8 and float (with reasons), the int8 share of the multiply-adds, file
size against the fp32 ONNX, the simulation contract at batch 1 and 16 (error of ORT vs the simulation,
vs float, and the simulation's own rounding-flip noise), and ORT latency int8 / fp32 at batch 1 and 8
(alternating blocks). Random weights make logits small and near-tied, so rounding flips are larger
than on trained models; accuracy figures live in docs/results.md.

    .venv/bin/python benchmarks/coverage.py [--only resnet18 vit_b_16]

Writes benchmarks/results/coverage.json and docs/coverage.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch

from finequant.cpu import cpu_description
from finequant.models import load_model
from finequant.quant import QuantConfig, quantize
from finequant.runtime.agreement import simulation_agreement, simulation_explains
from finequant.runtime.backends import Runner
from finequant.runtime.bench import measure_side_by_side
from finequant.runtime.exporters import export
from finequant.runtime.ort import integer_ops, optimized_ops, run, session

MODELS = ("efficientnet_lite0", "torchvision:resnet18", "torchvision:mobilenet_v3_small",
          "torchvision:efficientnet_b0", "torchvision:squeezenet1_1", "torchvision:convnext_tiny",
          "torchvision:swin_t", "torchvision:vit_b_16", "timm:deit_tiny_patch16_224", "timm:repvgg_a0",
          "timm:mobilevit_xxs", "timm:efficientnet_b0")
THREADS = 2


@torch.no_grad()
def reestimate_batchnorm(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """BatchNorm statistics of a random-init model set from data (cumulative average over ``batches``):
    with the initial (0, 1) statistics, signals vanish through deep nets (MobileNetV3's logits were 4e-8,
    which int8 rounds to exactly 0)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        model(x)
    model.eval()


def measure(spec: str, work: Path) -> dict:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    loaded = load_model(spec) if spec == "efficientnet_lite0" else load_model(spec, pretrained=False)
    s = loaded.preprocess.input_size
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, s, s, generator=gen) for _ in range(4)]
    if spec != "efficientnet_lite0":
        reestimate_batchnorm(loaded.model, calib)
    if isinstance(loaded.head, torch.nn.Linear) and not loaded.head.weight.any():
        torch.nn.init.normal_(loaded.head.weight, std=0.02)  # torchvision's ViT starts from a zero head: logits 0
    qm = quantize(loaded, QuantConfig(), calib)
    report = export(qm, work / "int8.onnx", loaded=loaded)
    fp32 = export(loaded, work / "fp32.onnx")
    row = {"model": spec, "input_size": s, "params_m": sum(p.numel() for p in loaded.model.parameters()) / 1e6,
           "int8_layers": report["int8_layers"], "float_layers": report["float_layers"],
           "int8_compute_share": report["int8_compute_share"], "int8_weight_share": report["int8_weight_share"],
           "size_vs_fp32_onnx": report["bytes"] / fp32["bytes"],
           "quantize_export_s": time.perf_counter() - t0, "warnings": report["warnings"]}
    sess = session(work / "int8.onnx", threads=THREADS, spin=False)
    for b in (1, 16):
        x = torch.randn(b, 3, s, s, generator=gen)
        a = simulation_agreement(qm.model, x, run(sess, x.numpy()))
        row[f"simulation_b{b}"] = {**a, "contract_met": simulation_explains(a)}
    ops = optimized_ops(work / "int8.onnx", work)
    row["integer_ops"] = integer_ops(ops)
    row["float_heavy_ops"] = {k: v for k, v in ops.items() if k in ("Conv", "MatMul", "Gemm", "FusedConv",
                                                                  "FusedMatMul", "FusedGemm")}
    fsess = session(work / "fp32.onnx", threads=THREADS, spin=False)
    runners = {"fp32": Runner("onnxruntime", lambda x: run(fsess, x), None),
               "int8": Runner("onnxruntime", lambda x: run(sess, x), None)}
    for b in (1, 8):
        x = torch.randn(b, 3, s, s, generator=gen).numpy()
        timed = measure_side_by_side(runners, x, warmup=2, rounds=10, cycles=2)
        row[f"ms_b{b}"] = {k: v["p50_ms"] for k, v in timed.items()}
        row[f"int8_vs_fp32_b{b}"] = timed["int8"]["p50_ms"] / timed["fp32"]["p50_ms"]
    return row


def write_doc(rows: list[dict], cpu: str, path: Path) -> None:
    lines = [
        "# Static int8 coverage of zoo architectures (`benchmarks/coverage.py`)", "",
        f"CPU: {cpu}, {THREADS} ONNX Runtime threads. Random init at each model's own input size (EfficientNet-Lite0:",
        "the bundled ImageNet weights) with BatchNorm statistics re-estimated on the calibration data, W8A8",
        "calibrated on 4 random batches of 4, finequant's QDQ export run on ONNX Runtime.",
        "`explained` = 1 - err(ORT vs simulation) / err(ORT vs float) on random inputs; the contract holds when",
        "err(ORT vs simulation) <= max(0.1 x err(ORT vs float), 2 x the simulation's rounding-flip noise).", "",
        "| model | px | params M | int8 layers | float layers | int8 MACs / weights | size vs fp32 ONNX "
        "| explained b1 / b16 (flip noise b16) | contract | int8/fp32 time b1 / b8 |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | - | - | - | - | - | - | - | error: {r['error'][:120]} | - |")
            continue
        s1, s16 = r["simulation_b1"], r["simulation_b16"]
        lines.append(
            f"| {r['model']} | {r['input_size']} | {r['params_m']:.1f} | {r['int8_layers']} | {len(r['float_layers'])} "
            f"| {r['int8_compute_share']:.0%} / {r.get('int8_weight_share', float('nan')):.0%} | {r['size_vs_fp32_onnx']:.3f} | {s1['explained']:.2f} / "
            f"{s16['explained']:.2f} ({s16['flip_noise']:.4f}) | {'met' if s1['contract_met'] and s16['contract_met'] else 'MISSED'} "
            f"| {r['int8_vs_fp32_b1']:.2f} / {r['int8_vs_fp32_b8']:.2f} |")
    groups: dict[tuple[str, str], list[str]] = {}  # (model, reason) -> layers
    for r in rows:
        for n, why in r.get("float_layers", {}).items():
            groups.setdefault((r["model"], why), []).append(n)
    if groups:
        lines += ["", "Layers left float, and why:", ""] + [
            f"- {m}: {len(names)} layer(s) such as `{names[0]}`: {why}" for (m, why), names in groups.items()]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "coverage.json")
    ap.add_argument("--doc", type=Path, default=Path(__file__).parents[1] / "docs" / "coverage.md")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    old = {r["model"]: r for r in json.loads(args.json.read_text())["rows"]} if args.json.is_file() else {}
    for spec in MODELS:
        if args.only and not any(o in spec for o in args.only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                old[spec] = measure(spec, Path(tmp))
            except Exception as e:  # one architecture failing must not hide the others' figures
                traceback.print_exc()
                old[spec] = {"model": spec, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps({k: v for k, v in old[spec].items() if k != "float_layers"}, default=str)[:600], flush=True)
        rows = [old[m] for m in MODELS if m in old]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_description(), "rows": rows}, indent=2, default=str))
        write_doc(rows, cpu_description(), args.doc)


if __name__ == "__main__":
    main()
