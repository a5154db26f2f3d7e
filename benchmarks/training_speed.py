"""finequant's training loop against a plain hand-written PyTorch loop, and channels_last / bf16 on CPU.

Same model, data set, DataLoader transform, batch size and optimizer (AdamW) for every contender; each
is one epoch over the same training images (or sentences), repeated in alternating rounds so that drift
in machine speed hits all alike; the figure is the median seconds per step. finequant's loop runs with
its defaults (gradient clipping, LR schedule, per-step finite-loss check, progress bar). Prints the ratio
finequant / plain (target <= 1.05), and plain channels_last and plain bf16 autocast over plain fp32.
finequant trains convolutional image models in channels_last by default (the measured winner here),
so its vision row is compared with both plain loops.

    python benchmarks/training_speed.py [--rounds 3] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from finequant.cpu import cpu_class
from finequant.data import load_data, make_loader, stratified_split
from finequant.models import load_model
from finequant.models.base import forward
from finequant.train import FinetuneConfig, finetune
from finequant.train.defaults import text_max_tokens

CASES = {  # name: model, data, image size, batch, training samples
    "vision": ("efficientnet_lite0", "mnist5k", 64, 64, 640),
    "text": ("minilm", "rotten_tomatoes", None, 32, 320),
}


def _setup(case: str):
    model, data, size, batch, n = CASES[case]
    splits = stratified_split(load_data(data), val_frac=0.1, test_frac=0.1, seed=0, max_samples=int(n / 0.8))
    torch.manual_seed(0)
    loaded = load_model(model)
    loaded.set_num_classes(len(splits.train.classes), splits.train.classes, announce=False)
    if size:
        loaded.preprocess = loaded.preprocess.with_size(size)
    else:  # the truncation finetune decides, for both loops: a step's cost depends on the padded length
        loaded.tokenizer.model_max_length = text_max_tokens(loaded, list(splits.train.items))[0]
    return loaded, splits, batch


def plain(case: str, *, channels_last: bool = False, bf16: bool = False) -> float:
    """Seconds per step of the loop a user would write by hand."""
    loaded, splits, batch = _setup(case)
    model = loaded.model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    # the very batches finetune draws (text steps cost what their longest sentence costs)
    sampler = DistributedSampler(range(len(splits.train)), num_replicas=1, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(0)
    loader = make_loader(splits.train, loaded, batch_size=batch, sampler=sampler)
    t0, steps = time.perf_counter(), 0
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(model, x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return (time.perf_counter() - t0) / steps


def ours(case: str) -> float:
    """Seconds per step of ``finetune`` (strategy full, BatchNorm trained like the plain loop)."""
    loaded, splits, batch = _setup(case)
    size = CASES[case][2]
    r = finetune(loaded, splits, FinetuneConfig(strategy="full", epochs=1, batch_size=batch, image_size=size,
                                                freeze_bn_stats=False if size else None))
    return r.history[0]["epoch_time_s"] / -(-len(splits.train) // batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="Also time bf16 autocast (>10x slower without bf16 units).")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "training_speed.json")
    args = ap.parse_args()
    results = {"cpu": cpu_class(), "threads": torch.get_num_threads(), "cases": {}}
    for case in args.cases:
        contenders = {"plain fp32": lambda: plain(case), "finequant": lambda: ours(case)}
        if CASES[case][2]:
            contenders["plain channels_last"] = lambda: plain(case, channels_last=True)
        if args.bf16:
            contenders["plain bf16 autocast"] = lambda: plain(case, bf16=True)
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for r in range(args.rounds):
            for name, fn in contenders.items():
                if "bf16" not in name or r == 0:  # bf16 without native bf16 units is >10x slower: once is enough
                    times[name].append(fn())
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["plain fp32"]
        row = {k: {"s_per_step": v, "ratio_to_plain_fp32": v / base, "runs": times[k]} for k, v in med.items()}
        results["cases"][case] = {"model": CASES[case][0], "data": CASES[case][1], "batch": CASES[case][3], **row}
        for k, v in row.items():
            print(f"{case:6s} {k:22s} {v['s_per_step'] * 1000:8.1f} ms/step  x{v['ratio_to_plain_fp32']:.3f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
