"""Transfer-learning figures for docs/results.md: strategies on the bundled models and data.

EfficientNet-Lite0 (ImageNet) -> mnist5k at 64 px: last-layer (feature cache), lp-ft, full.
MiniLM -> Rotten Tomatoes (stratified subset): last-layer, lp-ft.
Run: ``.venv/bin/python benchmarks/transfer_results.py`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from finequant.workflow import finetune_run
from finequant.train import FinetuneConfig

RUNS = {
    "vision/last-layer": ("efficientnet_lite0", "mnist5k", None,
                          FinetuneConfig(strategy="last-layer", epochs=10, image_size=64, lr=3e-3)),
    "vision/lp-ft": ("efficientnet_lite0", "mnist5k", None,
                     FinetuneConfig(strategy="lp-ft", epochs=3, lp_epochs=1, image_size=64, lr=3e-3,
                                    freeze_bn_stats=True)),
    "vision/lp-ft-bn-train": ("efficientnet_lite0", "mnist5k", None,
                              FinetuneConfig(strategy="lp-ft", epochs=3, lp_epochs=1, image_size=64, lr=3e-3)),
    "vision/full": ("efficientnet_lite0", "mnist5k", None,
                    FinetuneConfig(strategy="full", epochs=2, image_size=64, lr=3e-3, freeze_bn_stats=True)),
    "text/last-layer": ("minilm", "rotten_tomatoes", 2000,
                        FinetuneConfig(strategy="last-layer", epochs=8, lr=1e-2, batch_size=32)),
    "text/lp-ft": ("minilm", "rotten_tomatoes", 2000,
                   FinetuneConfig(strategy="lp-ft", epochs=3, lp_epochs=2, lr=1e-2, lr_mult=100, batch_size=32)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/transfer"))
    ap.add_argument("--only", nargs="*", help="Subset of run names.")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "transfer.json")
    args = ap.parse_args()
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for name, (model, data, max_samples, cfg) in RUNS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        r = finetune_run(model, data, cfg, args.out / name, max_samples=max_samples)
        full_epochs = [h["epoch_time_s"] for h in r.history if not h["cached"]]
        cached_epochs = [h["epoch_time_s"] for h in r.history if h["cached"]]
        results[name] = {
            "model": model, "data": data, "max_samples": max_samples, "strategy": cfg.strategy, "epochs": cfg.epochs,
            "image_size": cfg.image_size, "freeze_bn_stats": cfg.freeze_bn_stats,
            "test_accuracy": r.metrics["test"]["accuracy"], "test_macro_f1": r.metrics["test"]["macro_f1"],
            "best_val_accuracy": r.metrics["best_val_accuracy"],
            "mean_full_epoch_s": sum(full_epochs) / len(full_epochs) if full_epochs else None,
            "mean_cached_epoch_s": sum(cached_epochs) / len(cached_epochs) if cached_epochs else None,
            "feature_extraction_s": r.timings["feature_extraction_s"], "wall_s": time.perf_counter() - t0,
        }
        print(f"{name}: test acc {r.metrics['test']['accuracy']:.4f} in {results[name]['wall_s']:.0f} s")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
