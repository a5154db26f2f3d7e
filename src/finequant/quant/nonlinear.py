"""Nonlinear weight quantization: power-of-two (logarithmic) levels and k-means codebooks.

Both return integer codes plus what decodes them, so the artifact stores indices + codebook.
"""

from __future__ import annotations

import torch


def pow2_levels(bits: int) -> torch.Tensor:
    """Magnitude levels ``0, 2^-(n-2), ..., 2^-1, 1`` for a signed ``bits``-bit log code (1 sign bit)."""
    n = 2 ** (bits - 1)
    return torch.cat([torch.zeros(1), 2.0 ** -torch.arange(n - 2, -1, -1, dtype=torch.float32)])


def pow2_quantize(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (sign * level index), per-tensor scale (max |w|) and the level table; rounding in log space."""
    scale = w.detach().abs().max().clamp(min=1e-12)
    levels = pow2_levels(bits)
    mag = (w.detach().abs() / scale).clamp(max=1.0)
    # nearest level in the log domain: between 2^-k and 2^-(k+1) the midpoint is the geometric mean
    log_mid = torch.log2(levels[1:-1] * levels[2:]) / 2 if len(levels) > 2 else torch.empty(0)
    idx = torch.bucketize(torch.log2(mag.clamp(min=1e-30)), log_mid) + 1
    idx = torch.where(mag < levels[1] / 2, torch.zeros_like(idx), idx)  # below half the smallest level -> 0
    codes = (torch.sign(w.detach()) * idx).to(torch.int32)
    return codes, scale, levels


def pow2_dequantize(codes: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    return torch.sign(codes.float()) * levels[codes.abs().long()] * scale


def kmeans_codebook(w: torch.Tensor, bits: int, iters: int = 25, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means (Lloyd) with ``2^bits`` centroids, initialized at quantiles. Returns (indices, codebook)."""
    x = w.detach().flatten().float()
    k = min(2**bits, x.numel())
    sample = x if x.numel() <= 1 << 18 else x[torch.randperm(x.numel(),
                                                              generator=torch.Generator().manual_seed(seed))[:1 << 18]]
    centroids = torch.quantile(sample, torch.linspace(0, 1, k))
    for _ in range(iters):
        assign = (sample[:, None] - centroids[None]).abs().argmin(1)
        sums = torch.zeros(k).scatter_add_(0, assign, sample)
        counts = torch.zeros(k).scatter_add_(0, assign, torch.ones_like(sample))
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.allclose(new, centroids):
            break
        centroids = new
    centroids, _ = centroids.sort()
    mid = (centroids[1:] + centroids[:-1]) / 2
    indices = torch.bucketize(x, mid).reshape(w.shape).to(torch.int32)
    return indices, centroids


def kmeans_dequantize(indices: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return codebook[indices.long()]
