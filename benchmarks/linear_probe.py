"""finequant's default linear probe vs a tuned scikit-learn LogisticRegression on the same cached features.

Both see the same frozen-body features (extracted once by finequant's feature cache) and the same
train/val/test split; scikit-learn's C is chosen on the validation split from a grid, as a careful
user would. Prints test accuracy of each and the gap, writes benchmarks/results/linear_probe.json.

    python benchmarks/linear_probe.py --data digits mnist5k --image-size 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from finequant.cpu import cpu_class
from finequant.data import load_data, make_loader, stratified_split
from finequant.models import load_model
from finequant.train.features import extract_features
from finequant.train.probe import fit_linear_probe


def features(model_spec: str, data: str, image_size: int | None, max_samples: int | None):
    torch.manual_seed(0)
    loaded = load_model(model_spec)
    splits = stratified_split(load_data(data), seed=0, max_samples=max_samples)
    loaded.set_num_classes(len(splits.train.classes), splits.train.classes)
    if loaded.task == "image" and image_size:
        loaded.preprocess = loaded.preprocess.with_size(image_size)
    out = {}
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        out[name] = (extract_features(loaded.model, loaded.head, make_loader(split, loaded, batch_size=128),
                                      torch.device("cpu")), torch.as_tensor(split.labels))
    return loaded, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["digits", "mnist5k", "rotten_tomatoes"])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/linear_probe.json"))
    args = ap.parse_args()
    rows = []
    for data in args.data:
        spec = "minilm" if data == "rotten_tomatoes" else "efficientnet_lite0"
        loaded, f = features(spec, data, args.image_size, None)
        t0 = time.perf_counter()
        fit = fit_linear_probe(loaded.head, f["train"], f["val"])
        ours_s = time.perf_counter() - t0
        with torch.no_grad():
            ours = float((loaded.head(f["test"][0]).argmax(1) == f["test"][1]).float().mean())
        scaler = StandardScaler().fit(f["train"][0].numpy())
        xs = {k: scaler.transform(v[0].numpy()) for k, v in f.items()}
        t0 = time.perf_counter()
        best = max((LogisticRegression(C=c, max_iter=3000).fit(xs["train"], f["train"][1].numpy())
                    for c in (0.001, 0.01, 0.1, 1.0, 10.0)),
                   key=lambda m: m.score(xs["val"], f["val"][1].numpy()))
        sk_s = time.perf_counter() - t0
        sk = float(best.score(xs["test"], f["test"][1].numpy()))
        row = {"data": data, "model": spec, "image_size": args.image_size if spec != "minilm" else None,
               "train": len(f["train"][1]), "test": len(f["test"][1]), "finequant_acc": ours,
               "finequant_l2": fit.l2, "finequant_s": ours_s, "sklearn_acc": sk, "sklearn_C": best.C,
               "sklearn_s": sk_s, "gap_pt": 100 * (ours - sk), "cpu": cpu_class()}
        rows.append(row)
        print(f"{data:16s} finequant {ours:.4f} (L2 {fit.l2:g}, {ours_s:.1f} s) | sklearn {sk:.4f} "
              f"(C {best.C:g}, {sk_s:.1f} s) | gap {row['gap_pt']:+.2f} pt")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
