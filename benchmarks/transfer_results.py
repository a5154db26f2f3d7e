"""Transfer-learning figures for docs/results.md: strategies on the bundled models and data.

Tuned runs: EfficientNet-Lite0 (ImageNet) -> mnist5k at 64 px: last-layer (feature cache), lp-ft, full;
MiniLM -> Rotten Tomatoes (stratified subset): last-layer, lp-ft.
Default runs (``defaults/DATA/STRATEGY``): every bundled data set, whole, with nothing set but the
strategy (and 64 px for the 8-28 px digits): what a new user gets.
Run: ``.venv/bin/python benchmarks/transfer_results.py [--only defaults/]`` (10-30 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from finequant.cpu import cpu_class
from finequant.train import FinetuneConfig
from finequant.workflow import finetune_run

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
RUNS.update({f"defaults/{data}/{strategy}": (model, data, None, FinetuneConfig(strategy=strategy, image_size=size))
             for data, model, size in (("digits", "efficientnet_lite0", 64), ("mnist5k", "efficientnet_lite0", 64),
                                       ("rotten_tomatoes", "minilm", None))
             for strategy in ("last-layer", "lp-ft", "full")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/transfer"))
    ap.add_argument("--only", nargs="*", help="Run names, or prefixes of them (defaults/).")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "transfer.json")
    args = ap.parse_args()
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for name, (model, data, max_samples, cfg) in RUNS.items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        t0 = time.perf_counter()
        r = finetune_run(model, data, cfg, args.out / name, max_samples=max_samples)
        full_epochs = [h["epoch_time_s"] for h in r.history if not h["cached"]]
        cached_epochs = [h["epoch_time_s"] for h in r.history if h["cached"]]
        results[name] = {
            "model": model, "data": data, "max_samples": max_samples, "strategy": r.config.strategy, "epochs": r.config.epochs,
            "image_size": cfg.image_size, "freeze_bn_stats": r.config.freeze_bn_stats, "decisions": r.decisions,
            "cpu": cpu_class(),
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
