"""Quantization figures for docs/results.md, on the fine-tuned models of transfer_results.py.

EfficientNet-Lite0 -> mnist5k (lp-ft run): float, static int8 per observer, per-tensor vs
per-channel, W4A8 PTQ vs QAT, pow2 and k-means 4-bit weights. MiniLM -> Rotten Tomatoes: dynamic
int8 and fp16. Advanced PTQ: per-tensor int8 with CLE (+ bias correction), W4A8 round-to-nearest vs AdaRound.
Each row is a real ``finequant quantize`` run (artifact + summary.json).
Run: ``.venv/bin/python benchmarks/quant_results.py`` after transfer_results.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from finequant.workflow import quantize_run
from finequant.quant import QATConfig, QuantConfig

VISION = {
    "static int8 per-channel, minmax": QuantConfig(),
    "static int8 per-channel, moving-average": QuantConfig(observer="moving-average"),
    "static int8 per-channel, percentile": QuantConfig(observer="percentile"),
    "static int8 per-channel, mse": QuantConfig(observer="mse"),
    "static int8 per-channel, entropy": QuantConfig(observer="entropy"),
    "static int8 per-tensor, minmax": QuantConfig(granularity="per-tensor"),
    "static int8 per-tensor, percentile": QuantConfig(granularity="per-tensor", observer="percentile"),
    "static int8 per-tensor, CLE": QuantConfig(granularity="per-tensor", ptq=["cle"]),
    "static int8 per-tensor, CLE + bias correction": QuantConfig(granularity="per-tensor",
                                                                 ptq=["cle", "bias-correction"]),
    "W4A8 PTQ per-channel, round-to-nearest": QuantConfig(weight_bits=4),
    "W4A8 PTQ per-channel, AdaRound": QuantConfig(weight_bits=4, ptq=["adaround"]),
    "W4A8 PTQ per-channel, AdaRound + bias correction": QuantConfig(weight_bits=4,
                                                                    ptq=["adaround", "bias-correction"]),
    "W4A8 PTQ per-channel, mse weights": QuantConfig(weight_bits=4, weight_observer="mse"),
    "W4A8 QAT (2 epochs, distillation)": QuantConfig(method="qat", weight_bits=4),
    "weights pow2 4-bit": QuantConfig(method="nonlinear", weight_bits=4, scheme="pow2"),
    "weights k-means 4-bit": QuantConfig(method="nonlinear", weight_bits=4, scheme="kmeans"),
    "fp16": QuantConfig(method="fp16"),
}
TEXT = {
    "dynamic int8": QuantConfig(method="dynamic"),
    "fp16": QuantConfig(method="fp16"),
    "weight-only int4 per-group 32": QuantConfig(method="weight-only", weight_bits=4, granularity="per-group",
                                                 group_size=32),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, default=Path("runs/transfer"))
    ap.add_argument("--out", type=Path, default=Path("runs/quant"))
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "quant.json")
    ap.add_argument("--only", nargs="*", help="Subset of row names (group/name).")
    args = ap.parse_args()
    results: dict[str, dict] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    qat = QATConfig(epochs=2, lr=1e-4, distill=0.5)
    for group, source, table in (("vision", args.runs / "vision" / "lp-ft", VISION),
                                 ("text", args.runs / "text" / "last-layer", TEXT)):
        for name, cfg in table.items():
            if args.only and f"{group}/{name}" not in args.only:
                continue
            slug = name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
            r = quantize_run(str(source), cfg, args.out / group / slug, qat=qat)
            m, s = r["metrics"], r["sizes"]
            results[f"{group}/{name}"] = {
                "float_accuracy": m["float"]["accuracy"], "accuracy": m["quantized"]["accuracy"],
                "drop_pt": m["accuracy_drop_pt"], "agreement": m["top1_agreement"],
                "logits_sqnr_db": m["logits_sqnr_db"], "artifact_bytes": s["artifact_bytes"],
                "size_ratio": s["size_ratio"], "quantize_s": r["timings"]["quantize_s"],
            }
            print(f"{group}/{name}: {m['quantized']['accuracy']:.4f} (float {m['float']['accuracy']:.4f}, "
                  f"drop {m['accuracy_drop_pt']:+.2f} pt), size x{s['size_ratio']:.3f}")
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
