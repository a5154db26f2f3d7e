"""What this CPU's integer kernels can do, read once from /proc/cpuinfo (Linux; elsewhere: nothing known).

ONNX Runtime runs u8 activations x s8 weights with VPDPBUSD on CPUs with VNNI (exact int32 sums),
but with VPMADDUBSW on AVX2-only CPUs, whose int16 pair sums saturate when two products exceed
32767: measured here on an AVX2 AMD EPYC, an int8 CNN's logits had cosine 0.92 to the simulation,
0.99999 with 7-bit weights. So without VNNI, QDQ weights default to 7 bits (ORT's ``reduce_range``).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_vnni() -> bool:
    """Exact u8 x s8 dot products in integer kernels (AVX512-VNNI, AVX-VNNI or AMX); ARM's SDOT counts too."""
    flags = cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True  # NEON/SDOT kernels widen before adding: no saturation
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_class() -> str:
    """A short name for the integer-kernel class of this CPU, recorded in artifacts."""
    flags = cpu_flags()
    if "amx_int8" in flags:
        return "x86-amx"
    if has_vnni():
        return "x86-vnni" if flags else platform.machine().lower()
    return "x86-avx2" if "avx2" in flags else (platform.machine().lower() or "unknown")


def cpu_description() -> str:
    """The CPU's model name and its integer-kernel flags, to print beside every measured figure."""
    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = cpu_flags()
    present = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{name} (flags: {', '.join(present) or 'none of avx2/avx512/vnni'}; {cpu_class()})"
