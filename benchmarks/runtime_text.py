"""MiniLM -> Rotten Tomatoes on real int8 kernels: dynamic int8 on ONNX Runtime, side by side.

Contenders, one process, same fine-tuned model: fp32 eager PyTorch; ONNX Runtime fp32; finequant
``dynamic`` int8 exported with our own per-channel weight codes (DynamicQuantizeLinear ->
MatMulInteger, fused by ORT); ORT's own ``quantize_dynamic`` (per-channel int8 weights) on the same
fp32 ONNX; the same int8 codes on PyTorch's own (deprecated torch.ao) dynamic int8 Linear kernel.
Reports test accuracy, top-1 agreement and logit cosine against fp32 and against
finequant's simulation, latency at batch 1 and 16 (p50, alternating blocks) and file size.
Writes benchmarks/results/runtime_text.json and docs/benchmarks_text.md.
Run: ``.venv/bin/python benchmarks/runtime_text.py --run runs/transfer/text/last-layer``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finequant.workflow import open_source
from finequant.data import make_loader
from finequant.quant import QuantConfig, quantize
from finequant.runtime.backends import Runner, to_numpy
from finequant.runtime.bench import measure_side_by_side
from finequant.runtime.onnx_dynamic import export_dynamic
from finequant.runtime.onnx_qdq import export_float
from finequant.runtime.torch_int8 import dynamic_int8_model
from finequant.runtime.ort import optimized_ops, run, session
from peers import ort_quantize_dynamic


ONNX_FILES = {"ORT fp32": "fp32.onnx", "finequant dynamic int8 (ORT)": "finequant.int8.onnx",
              "ORT quantize_dynamic": "ort.int8.onnx"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path, default=Path("runs/transfer/text/last-layer"))
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "runtime_text.json")
    ap.add_argument("--doc", type=Path, default=Path("docs/benchmarks_text.md"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    src = open_source(args.run)
    loaded, splits = src.loaded, src.splits
    test = list(make_loader(splits.test, loaded, batch_size=50))
    tmp = Path(tempfile.mkdtemp(prefix="text-bench-"))
    example = {k: v[:2] for k, v in test[0][0].items()}
    export_float(loaded.model, example, tmp / "fp32.onnx")
    qm = quantize(loaded, QuantConfig(method="dynamic"))
    _, done = export_dynamic(qm, example, tmp / "finequant.int8.onnx")
    t0 = time.perf_counter()
    ort_quantize_dynamic(tmp / "fp32.onnx", tmp / "ort.int8.onnx")
    ort_q_s = time.perf_counter() - t0
    sessions = {name: session(tmp / f, spin=False) for name, f in ONNX_FILES.items()}
    loaded.model.eval()
    with torch.no_grad():
        ref = [loaded.model(**x).numpy() for x, _ in test]
        sim = [qm.model(**x).numpy() for x, _ in test]
    labels = np.concatenate([y.numpy() for _, y in test])
    rows: dict[str, dict[str, Any]] = {}

    def stats(outs: list[np.ndarray], against: list[np.ndarray]) -> tuple[float, float]:
        a, b = np.concatenate(outs), np.concatenate(against)
        cos = float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
        return float((a.argmax(1) == b.argmax(1)).mean()), cos

    for name, sess in sessions.items():
        outs = [run(sess, to_numpy(x)) for x, _ in test]
        agree, cos = stats(outs, ref)
        agree_sim, cos_sim = stats(outs, sim)
        rows[name] = {"test_accuracy": float((np.concatenate(outs).argmax(1) == labels).mean()),
                      "agreement_vs_fp32": agree, "cosine_vs_fp32": cos, "agreement_vs_sim": agree_sim,
                      "cosine_vs_sim": cos_sim, "file_bytes": (tmp / ONNX_FILES[name]).stat().st_size}
    rows["fp32 eager PyTorch"] = {"test_accuracy": float((np.concatenate(ref).argmax(1) == labels).mean())}
    torch_int8, _ = dynamic_int8_model(qm.model)
    with torch.no_grad():
        outs = [torch_int8(**x).numpy() for x, _ in test]
    agree, cos = stats(outs, ref)
    agree_sim, cos_sim = stats(outs, sim)
    rows["finequant dynamic int8 (PyTorch kernels)"] = {
        "test_accuracy": float((np.concatenate(outs).argmax(1) == labels).mean()), "agreement_vs_fp32": agree,
        "cosine_vs_fp32": cos, "agreement_vs_sim": agree_sim, "cosine_vs_sim": cos_sim}
    rows["finequant dynamic int8 (torch-sim)"] = {
        "test_accuracy": float((np.concatenate(sim).argmax(1) == labels).mean())}
    int_ops = {k: v for k, v in optimized_ops(tmp / "finequant.int8.onnx", tmp).items()
               if "Integer" in k or "Quant" in k}
    for batch in (1, 16):
        x = {k: v[:batch] for k, v in test[1][0].items()}
        runners = {"fp32 eager PyTorch": Runner("torch", lambda _, x=x: _torch(loaded.model, x), None),
                   "finequant dynamic int8 (PyTorch kernels)": Runner("torch", lambda _, x=x: _torch(torch_int8, x),
                                                                      None)}
        for name, sess in sessions.items():
            runners[name] = Runner(name, lambda _, s=sess, x=to_numpy(x): run(s, x), None)
        timed = measure_side_by_side(runners, np.zeros(batch), rounds=40)
        for name, t in timed.items():
            rows[name][f"p50_ms_b{batch}"] = t["p50_ms"]
        print(f"batch {batch}: " + ", ".join(f"{n} {t['p50_ms']:.2f} ms" for n, t in timed.items()))
    fates = {v: sum(1 for d in done.values() if d == v) for v in set(done.values())}
    result = {"rows": rows, "finequant_export": fates,
              "finequant_optimized_integer_ops": int_ops, "ort_quantize_dynamic_s": ort_q_s,
              "sequence_length": int(test[1][0]["input_ids"].shape[1])}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    args.doc.write_text(_markdown(result))
    print(json.dumps(result, indent=2))


def _torch(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        return model(**x).numpy()


def _markdown(r: dict[str, Any]) -> str:
    eager = r["rows"]["fp32 eager PyTorch"]
    lines = ["# Text runtime benchmark (generated by benchmarks/runtime_text.py)", "",
             f"MiniLM-L6 -> Rotten Tomatoes (linear probe run), 400 test sentences; latency on a batch of "
             f"sequence length {r['sequence_length']}, p50, contenders timed in alternating blocks.", "",
             "| contender | test acc | agreement vs fp32 | cosine vs fp32 | b1 ms | b16 ms | b1 vs eager | "
             "b16 vs eager | file MB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        if "p50_ms_b1" not in row:
            continue
        lines.append(f"| {name} | {row['test_accuracy']:.4f} | {row.get('agreement_vs_fp32', 1):.3f} | "
                     f"{row.get('cosine_vs_fp32', 1):.4f} | {row['p50_ms_b1']:.2f} | {row['p50_ms_b16']:.2f} | "
                     f"{row['p50_ms_b1'] / eager['p50_ms_b1']:.2f} | {row['p50_ms_b16'] / eager['p50_ms_b16']:.2f} | "
                     + (f"{row['file_bytes'] / 1e6:.1f} |" if "file_bytes" in row else "- |"))
    f = r["rows"]["finequant dynamic int8 (ORT)"]
    lines += ["", f"finequant int8 on ORT vs finequant's simulation: top-1 agreement {f['agreement_vs_sim']:.3f}, "
              f"logit cosine {f['cosine_vs_sim']:.4f}. Layers: {r['finequant_export']}. ORT's optimized graph: "
              f"{r['finequant_optimized_integer_ops']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
