"""Latency, throughput and memory of a runner, measured with warm-up and repeats."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from finequant.runtime.backends import Batch, Runner, batch_size


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    return _status_kb("VmHWM") / 1024


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter for this process (Linux); a no-op elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure(runner: Runner, example: Batch, *, warmup: int = 5, repeats: int = 30,
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
    return {**_stats(times, batch_size(example)), "peak_rss_mb": peak_rss_mb(),
            "rss_growth_mb": (_status_kb("VmRSS") - rss_before) / 1024}


def _stats(times: list[float], batch: int) -> dict[str, Any]:
    ms = np.array(times) * 1000
    return {"batch": batch, "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "throughput_per_s": float(batch * 1000 / np.median(ms)),
            "runs": len(times)}


def measure_side_by_side(runners: dict[str, Runner], example: Batch, *, warmup: int = 3,
                         rounds: int = 30, cycles: int = 5) -> dict[str, dict[str, Any]]:
    """Latency of several runners timed in alternating blocks (A×n, B×n, C×n, A×n, ...; ``cycles``
    blocks each, ``rounds`` timed runs in all), each block after ``warmup`` untimed runs, so that
    drift in machine speed (shared or throttled CPUs) hits every contender alike and the ratios stay fair."""
    per_block = max(1, rounds // cycles)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(cycles):
        for name, runner in runners.items():
            for _ in range(warmup):
                runner.predict(example)
            for _ in range(per_block):
                t0 = time.perf_counter()
                runner.predict(example)
                times[name].append(time.perf_counter() - t0)
    return {name: _stats(t, batch_size(example)) for name, t in times.items()}
