"""A BERT-base-sized encoder (random init: 12 layers, hidden 768, 12 heads, 3072; MiniLM's WordPiece vocabulary)
at 128 tokens on Rotten Tomatoes sentences, dynamic int8 (finequant's text default) on ONNX Runtime against ORT's
own ``quantize_dynamic`` on the same fp32 ONNX (configured as ``benchmarks/peers.py`` says), fp32 eager PyTorch
and ORT fp32, timed at batch 1 and 16 in alternating blocks (2 threads). Speed only (random weights), plus the
simulation contract on the batch-16 inputs.

    .venv/bin/python benchmarks/runtime_bert.py

Writes benchmarks/results/runtime_bert.json and docs/benchmarks_bert.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from finequant.cpu import cpu_description
from finequant.models import load_model
from finequant.quant import QuantConfig, quantize
from finequant.runtime.agreement import simulation_agreement, simulation_explains
from finequant.runtime.backends import Runner, to_numpy
from finequant.runtime.bench import measure_side_by_side
from finequant.runtime.exporters import export
from finequant.runtime.ort import integer_ops, optimized_ops, run, session
from peers import PEER_SETTINGS, ort_quantize_dynamic
from zoo import random_text_folder, sentence_batches

TOKENS, THREADS = 128, 2
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "runtime_bert.json")
    ap.add_argument("--doc", type=Path, default=Path(__file__).parents[1] / "docs" / "benchmarks_bert.md")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    work = Path(tempfile.mkdtemp(prefix="bert-bench-"))
    loaded = load_model(f"hf:{random_text_folder('bert-base', 'BertConfig', BERT_BASE, work)}")
    loaded.set_num_classes(2, ["neg", "pos"])
    example = sentence_batches(loaded, TOKENS)
    t0 = time.perf_counter()
    qm = quantize(loaded, QuantConfig(method="dynamic"))
    report = export(qm, work / "int8.onnx", loaded=loaded)
    fp32 = export(loaded, work / "fp32.onnx")
    quantize_s = time.perf_counter() - t0
    ort_quantize_dynamic(work / "fp32.onnx", work / "ort.onnx")
    sessions = {k: session(work / f"{k}.onnx", threads=THREADS, spin=False) for k in ("fp32", "int8", "ort")}
    labels = {"fp32": "ORT fp32", "int8": "finequant dynamic int8 (ORT)", "ort": "ORT quantize_dynamic"}
    x16 = example(16)
    agreement = simulation_agreement(qm.model, x16, run(sessions["int8"], to_numpy(x16)))
    result = {"cpu": cpu_description(), "threads": THREADS, "date": time.strftime("%Y-%m-%d"), "tokens": TOKENS,
              "config": BERT_BASE, "params_m": sum(p.numel() for p in loaded.model.parameters()) / 1e6,
              "peer": PEER_SETTINGS["ORT quantize_dynamic"], "quantize_export_s": quantize_s,
              "simulation_b16": {**agreement, "contract_met": simulation_explains(agreement)},
              "int8_compute_share": report["int8_compute_share"],
              "integer_ops": {k: integer_ops(optimized_ops(work / f"{k}.onnx", work)) for k in ("int8", "ort")},
              "file_mb": {labels[k]: (work / f"{k}.onnx").stat().st_size / 1e6 for k in labels},
              "fp32_onnx_mb": fp32["bytes"] / 1e6, "ms": {}}
    loaded.model.eval()
    for b in (1, 16):
        x = example(b)
        feed = to_numpy(x)

        def eager(_: np.ndarray, x: dict = x) -> np.ndarray:
            with torch.inference_mode():
                return loaded.model(**x).numpy()

        runners = {"fp32 eager PyTorch": Runner("torch", eager, None)}
        runners |= {labels[k]: Runner("onnxruntime", (lambda s: lambda _: run(s, feed))(s), None)
                    for k, s in sessions.items()}
        timed = measure_side_by_side(runners, np.zeros(b), warmup=1, rounds=20 if b == 1 else 6,
                                     cycles=4 if b == 1 else 3)
        result["ms"][f"b{b}"] = {k: v["p50_ms"] for k, v in timed.items()}
        print(f"batch {b}: " + ", ".join(f"{k} {v['p50_ms']:.1f} ms" for k, v in timed.items()), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    args.doc.write_text(_markdown(result))
    print(f"wrote {args.json} and {args.doc}")


def _markdown(r: dict) -> str:
    ms = r["ms"]
    rows = ["| contender | b1 ms | b16 ms | vs ORT fp32 b1 | vs ORT fp32 b16 | file MB |", "|---|---|---|---|---|---|"]
    for name in ms["b1"]:
        size = r["file_mb"].get(name)
        rows.append(f"| {name} | {ms['b1'][name]:.1f} | {ms['b16'][name]:.1f} | "
                    f"{ms['b1'][name] / ms['b1']['ORT fp32']:.2f} | {ms['b16'][name] / ms['b16']['ORT fp32']:.2f} | "
                    + (f"{size:.1f} |" if size is not None else "- |"))
    sim = r["simulation_b16"]
    return "\n".join([
        "# BERT-base-sized encoder, dynamic int8 (generated by `benchmarks/runtime_bert.py`)", "",
        f"{r['cpu']}, {r['threads']} threads, {r['date']}. Random-init BertConfig {r['config']} "
        f"({r['params_m']:.1f} M parameters), {r['tokens']} tokens of Rotten Tomatoes sentences; median latency, "
        "contenders timed in alternating blocks. ORT quantize_dynamic: " + r["peer"] + ".", "", *rows, "",
        f"- finequant int8 / ORT quantize_dynamic: {ms['b1']['finequant dynamic int8 (ORT)'] / ms['b1']['ORT quantize_dynamic']:.2f} "
        f"at b1, {ms['b16']['finequant dynamic int8 (ORT)'] / ms['b16']['ORT quantize_dynamic']:.2f} at b16.",
        f"- ORT's integer ops: finequant {r['integer_ops']['int8']}, ORT quantize_dynamic {r['integer_ops']['ort']}.",
        f"- Simulation vs ORT at b16: cosine {sim['cosine']:.5f}, explains {sim['explained']:.0%} of what int8 "
        f"changes, contract {'met' if sim['contract_met'] else 'MISSED'}; int8 share of multiply-adds "
        f"{r['int8_compute_share']:.1%}.", ""])


if __name__ == "__main__":
    main()
