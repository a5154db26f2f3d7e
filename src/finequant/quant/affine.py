"""Uniform affine quantization math on tensors: qparams, quantize, dequantize, fake-quantize (STE).

Pure functions, testable alone. Per-tensor, per-channel (any axis) and per-group (along the last
dimension after moving ``axis`` first) share one code path through :func:`reduce_shape`.
"""

from __future__ import annotations

import torch

from finequant.quant.spec import QuantSpec


def grouped(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View ``x`` so that qparams broadcast: per-tensor as is; per-channel with ``axis`` first;
    per-group as ``[channels, n_groups, group_size]`` (the last dim must divide by group_size)."""
    if spec.granularity == "per-tensor":
        return x
    moved = x.movedim(spec.axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    if spec.granularity == "per-channel":
        return flat
    if flat.shape[1] % spec.group_size:
        from finequant.errors import ConfigError

        raise ConfigError(f"group_size={spec.group_size} does not divide the {flat.shape[1]} inputs per channel")
    return flat.reshape(flat.shape[0], -1, spec.group_size)


def ungrouped(g: torch.Tensor, like: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    if spec.granularity == "per-tensor":
        return g
    moved_shape = like.movedim(spec.axis, 0).shape
    return g.reshape(moved_shape).movedim(0, spec.axis)


def minmax_of(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max at the spec's granularity (shape broadcastable against :func:`grouped`)."""
    g = grouped(x.detach(), spec)
    if spec.granularity == "per-tensor":
        return g.min(), g.max()
    return g.amin(dim=-1, keepdim=True), g.amax(dim=-1, keepdim=True)


def qparams(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point covering ``[lo, hi]`` (always including 0, so 0 is exact)."""
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    eps = torch.finfo(torch.float32).eps
    if spec.symmetric:
        amax = torch.maximum(-lo, hi)
        if spec.signed:  # amax/qmax: both signs representable, no rounding ties at the range ends
            scale = amax / spec.qmax
            zp = torch.zeros_like(scale)
        else:  # unsigned symmetric: mid-range zero point (e.g. 128 for u8)
            scale = 2 * amax / (spec.qmax - spec.qmin)
            zp = torch.full_like(scale, float((spec.qmax + spec.qmin + 1) // 2))
    else:
        scale = (hi - lo) / (spec.qmax - spec.qmin)
        zp = (spec.qmin - torch.round(lo / scale.clamp(min=eps))).clamp(spec.qmin, spec.qmax)
    return scale.clamp(min=eps), zp.to(torch.int32)


def quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Float -> integer codes (int32 tensor in ``[qmin, qmax]``)."""
    g = grouped(x, spec)
    q = torch.clamp(torch.round(g / scale) + zp, spec.qmin, spec.qmax)
    return ungrouped(q, x, spec).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    g = grouped(q.float(), spec)
    return ungrouped((g - zp) * scale, q, spec)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize-dequantize with a straight-through estimator.

    The gradient w.r.t. ``x`` is 1 inside the range and 0 where clipped; when ``scale`` requires
    grad it gets the LSQ gradient (Esser et al., 2020), so a learnable scale needs no other code.
    Rounds as ONNX QuantizeLinear does, ``round(x / scale) + zp``, never ``round(x / scale + zp)``:
    the two differ on exact ties when the zero point is odd, and 8-bit images normalized with mean
    and std 0.5 put every pixel on a tie (0.75 of what int8 changed went unsimulated on digits).
    """
    g = grouped(x, spec)
    v = torch.clamp(g / scale, spec.qmin - zp, spec.qmax - zp)
    v = v + (torch.round(v) - v).detach()
    return ungrouped(v * scale, x, spec)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    noise = (reference.float() - approx.float()).pow(2).mean()
    return float(10 * torch.log10(reference.float().pow(2).mean() / noise.clamp(min=1e-30)))
