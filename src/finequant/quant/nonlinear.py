"""Nonlinear weight quantization: power-of-two (logarithmic) levels and k-means codebooks.

Both work per tensor or per output channel (axis 0) and return integer codes plus what decodes
them, so the artifact stores indices + scales/codebooks. Per-channel matters: per-tensor 4-bit
codes destroy depthwise nets such as EfficientNet-Lite0 whose channel ranges differ by 100x.
"""

from __future__ import annotations

import torch


def _rows(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    return w.detach().float().reshape(w.shape[0] if per_channel else 1, -1)


def pow2_levels(bits: int) -> torch.Tensor:
    """Magnitude levels ``0, 2^-(n-2), ..., 2^-1, 1`` for a signed ``bits``-bit log code (1 sign bit)."""
    n = 2 ** (bits - 1)
    return torch.cat([torch.zeros(1), 2.0 ** -torch.arange(n - 2, -1, -1, dtype=torch.float32)])


def pow2_quantize(w: torch.Tensor, bits: int, per_channel: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (sign * level index), scale (max |w| per tensor or channel) and the level table.

    Rounding is to the nearest level in the log domain (the geometric mean of two levels).
    """
    rows = _rows(w, per_channel)
    scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    levels = pow2_levels(bits)
    mag = (rows.abs() / scale).clamp(max=1.0)
    log_mid = torch.log2(levels[1:-1] * levels[2:]) / 2 if len(levels) > 2 else torch.empty(0)
    idx = torch.bucketize(torch.log2(mag.clamp(min=1e-30)), log_mid) + 1
    idx = torch.where(mag < levels[1] / 2, torch.zeros_like(idx), idx)  # below half the smallest level -> 0
    codes = (torch.sign(rows) * idx).to(torch.int32).reshape(w.shape)
    return codes, scale.reshape(-1) if per_channel else scale.reshape(()), levels


def pow2_dequantize(codes: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    values = torch.sign(codes.float()) * levels[codes.abs().long()]
    return values * (scale.reshape(-1, *([1] * (codes.ndim - 1))) if scale.ndim else scale)


def kmeans_codebook(w: torch.Tensor, bits: int, per_channel: bool = False, iters: int = 25
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means (Lloyd) with ``2^bits`` centroids per tensor or per channel, initialized at quantiles.

    Returns (indices shaped like ``w``, codebook ``[rows, k]``), rows = channels or 1.
    """
    x = _rows(w, per_channel)
    k = min(2**bits, x.shape[1])
    centroids = torch.quantile(x, torch.linspace(0, 1, k), dim=1).T.contiguous()  # [rows, k]
    for _ in range(iters):
        assign = (x[:, :, None] - centroids[:, None, :]).abs().argmin(-1)
        sums = torch.zeros_like(centroids).scatter_add_(1, assign, x)
        counts = torch.zeros_like(centroids).scatter_add_(1, assign, torch.ones_like(x))
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.allclose(new, centroids):
            break
        centroids = new
    centroids, _ = centroids.sort(dim=1)
    return kmeans_assign(w, centroids), centroids


def kmeans_assign(w: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for every weight (codebook rows: one per channel, or one)."""
    x = w.detach().float().reshape(codebook.shape[0], -1)
    mid = ((codebook[:, 1:] + codebook[:, :-1]) / 2).contiguous()
    return torch.searchsorted(mid, x.contiguous()).to(torch.int32).reshape(w.shape)


def kmeans_dequantize(indices: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    flat = indices.long().reshape(codebook.shape[0], -1)
    return codebook.gather(1, flat).reshape(indices.shape)
