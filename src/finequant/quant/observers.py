"""Calibration observers: collect statistics of a tensor over batches, then give its clipping range.

Registry names are what the CLI's ``--observer`` accepts. Each returns ``(lo, hi)`` at the spec's
granularity, which :func:`finequant.quant.affine.qparams` turns into scale and zero point.
"""

from __future__ import annotations

import math

import torch

from finequant.quant.affine import fake_quantize, grouped, qparams
from finequant.quant.spec import QuantSpec
from finequant.catalog import OBSERVERS  # noqa: F401  (the registry of these classes)

MAX_SAMPLES_PER_CHANNEL = 1 << 18


class Observer:
    """Base: keeps running min/max and a bounded random sample of values per channel."""

    def __init__(self, spec: QuantSpec, seed: int = 0) -> None:
        self.spec = spec
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.sample: torch.Tensor | None = None
        self._gen = torch.Generator().manual_seed(seed)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """One row of values per qparam: 1 row per tensor, per channel, or per (channel, group)."""
        g = grouped(x.detach().float(), self.spec)
        self._qshape = () if self.spec.granularity == "per-tensor" else (*g.shape[:-1], 1)
        return g.reshape(1, -1) if self.spec.granularity == "per-tensor" else g.reshape(-1, g.shape[-1])

    def observe(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if self.keeps_sample:
            self.sample = rows if self.sample is None else torch.cat([self.sample, rows], dim=1)
            if self.sample.shape[1] > MAX_SAMPLES_PER_CHANNEL:
                keep = torch.randperm(self.sample.shape[1], generator=self._gen)[:MAX_SAMPLES_PER_CHANNEL]
                self.sample = self.sample[:, keep]

    keeps_sample = False

    @property
    def observed(self) -> bool:
        return self.lo is not None

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lo, self.hi

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point shaped to broadcast against :func:`grouped` views."""
        lo, hi = self.bounds()
        return qparams(lo.reshape(self._qshape), hi.reshape(self._qshape), self.spec)


class MinMaxObserver(Observer):
    pass


class MovingAverageObserver(Observer):
    def __init__(self, spec: QuantSpec, seed: int = 0, momentum: float = 0.1) -> None:
        super().__init__(spec, seed)
        self.momentum = momentum

    def observe(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)


class PercentileObserver(Observer):
    keeps_sample = True

    def __init__(self, spec: QuantSpec, seed: int = 0, percentile: float = 99.99) -> None:
        super().__init__(spec, seed)
        self.q = percentile / 100.0

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sample
        if self.spec.symmetric:
            a = torch.quantile(s.abs(), self.q, dim=1)
            return -a, a
        return torch.quantile(s, 1 - self.q, dim=1), torch.quantile(s, self.q, dim=1)


class MSEObserver(Observer):
    keeps_sample = True
    ratios = torch.linspace(0.3, 1.0, 71)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        s, lo, hi = self.sample, self.lo, self.hi
        if self.spec.symmetric:
            hi = torch.maximum(-lo, hi)
            lo = -hi
        spec = QuantSpec(bits=self.spec.bits, symmetric=self.spec.symmetric, signed=self.spec.signed,
                         narrow_range=self.spec.narrow_range)
        best_err = torch.full_like(lo, math.inf)
        best_lo, best_hi = lo.clone(), hi.clone()
        for r in self.ratios:
            scale, zp = qparams((lo * r)[:, None], (hi * r)[:, None], spec)
            err = (fake_quantize(s, scale, zp, spec) - s).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo * r, best_lo), torch.where(better, hi * r, best_hi)
        return best_lo, best_hi


class EntropyObserver(Observer):
    keeps_sample = True
    bins = 2048

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Non-negative data (after ReLU) on an unsigned spec gets all 2^bits levels and range [0, t].
        unsigned = not self.spec.signed and bool((self.lo >= 0).all())
        levels = 2 ** (self.spec.bits - (0 if unsigned else 1))
        thresholds = torch.stack([kl_threshold(row.abs(), self.bins, levels) for row in self.sample])
        return (torch.zeros_like(thresholds) if unsigned else -thresholds), thresholds


def kl_threshold(values: torch.Tensor, bins: int = 2048, levels: int = 128) -> torch.Tensor:
    """The |x| threshold whose ``levels``-level quantization keeps the histogram closest in KL divergence.

    Exact zeros are left out: our qparams always represent 0 exactly, and the spike of zeros after a
    ReLU (75% of values on MNIST-like inputs) would otherwise dominate the divergence and force a
    threshold at the smallest candidate.
    """
    values = values[values != 0]
    if values.numel() == 0:
        return torch.tensor(0.0)
    amax = float(values.max())
    hist = torch.histc(values.double(), bins=bins, min=0, max=amax)
    width = amax / bins
    best_kl, best_i = math.inf, bins
    for i in range(levels, bins + 1):
        p = hist[:i].clone()
        p[i - 1] += hist[i:].sum()  # outliers are clipped into the last bin
        # merge the i bins into `levels` chunks, then spread each chunk's mass over its non-empty bins
        chunk = torch.arange(i) * levels // i
        nonzero = (hist[:i] > 0).double()
        mass = torch.zeros(levels, dtype=torch.float64).scatter_add_(0, chunk, hist[:i])
        count = torch.zeros(levels, dtype=torch.float64).scatter_add_(0, chunk, nonzero)
        q = nonzero * mass[chunk] / count[chunk].clamp(min=1)
        p_n, q_n = p / p.sum(), q / q.sum().clamp(min=1e-30)
        mask = p_n > 0
        if (q_n[mask] == 0).any():
            continue
        kl = float((p_n[mask] * (p_n[mask] / q_n[mask]).log()).sum())
        if kl < best_kl:
            best_kl, best_i = kl, i
    return torch.tensor((best_i + 0.5) * width, dtype=torch.float32)
