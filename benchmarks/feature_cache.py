"""Per-epoch time of head-only training with and without the feature cache.

EfficientNet-Lite0 (bundled, ImageNet) -> mnist5k at 64 px, side by side in one process.
Target: cached / uncached per-epoch time <= 0.1. Run: ``.venv/bin/python benchmarks/feature_cache.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from finequant.data import load_data, stratified_split
from finequant.models import load_model
from finequant.train import FinetuneConfig, finetune


def run(cached: bool, epochs: int, size: int) -> dict:
    torch.manual_seed(0)
    loaded = load_model("efficientnet_lite0")
    splits = stratified_split(load_data("mnist5k"), seed=0)
    cfg = FinetuneConfig(strategy="last-layer", epochs=epochs, image_size=size, lr=3e-3, feature_cache=cached)
    r = finetune(loaded, splits, cfg)
    epoch_s = [h["epoch_time_s"] for h in r.history]
    return {"cached": cached, "epochs": epochs, "epoch_s": epoch_s, "mean_epoch_s": sum(epoch_s) / len(epoch_s),
            "feature_extraction_s": r.timings["feature_extraction_s"], "test_accuracy": r.metrics["test"]["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "feature_cache.json")
    args = ap.parse_args()
    cached, plain = run(True, args.epochs, args.size), run(False, args.epochs, args.size)
    ratio = cached["mean_epoch_s"] / plain["mean_epoch_s"]
    amortized = (cached["feature_extraction_s"] + sum(cached["epoch_s"])) / sum(plain["epoch_s"])
    result = {"cached": cached, "uncached": plain, "per_epoch_ratio": ratio, "total_ratio_incl_extraction": amortized,
              "target_per_epoch_ratio": 0.1, "threads": torch.get_num_threads()}
    print(f"uncached: {plain['mean_epoch_s']:.2f} s/epoch, test acc {plain['test_accuracy']:.4f}")
    print(f"cached:   {cached['mean_epoch_s']:.3f} s/epoch (+{cached['feature_extraction_s']:.1f} s once), "
          f"test acc {cached['test_accuracy']:.4f}")
    print(f"per-epoch ratio cached/uncached = {ratio:.4f} (target <= 0.1); "
          f"total incl. extraction over {args.epochs} epochs = {amortized:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
