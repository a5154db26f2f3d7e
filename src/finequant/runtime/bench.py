"""Latency, throughput and memory of a runner, measured with warm-up and repeats."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from finequant.runtime.backends import Runner


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter for this process (Linux); a no-op elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure(runner: Runner, example: np.ndarray, *, warmup: int = 5, repeats: int = 30,
            min_seconds: float = 1.0) -> dict[str, Any]:
    """p50/p90 latency (ms), throughput (samples/s) and peak RSS (MB) for one batch shape."""
    rss_before = _status_kb("VmRSS")
    reset_peak_rss()
    for _ in range(warmup):
        runner.predict(example)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        runner.predict(example)
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeats:
            break
    ms = np.array(times) * 1000
    batch = example.shape[0]
    return {"batch": batch, "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "throughput_per_s": float(batch * 1000 / np.median(ms)),
            "runs": len(times), "peak_rss_mb": _status_kb("VmHWM") / 1024,
            "rss_growth_mb": (_status_kb("VmRSS") - rss_before) / 1024}
