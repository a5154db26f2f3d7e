"""``QuantSpec``: how one tensor is quantized (scheme, bits, sign, range, granularity)."""

from __future__ import annotations

from dataclasses import dataclass

from finequant.errors import ConfigError

SCHEMES = ("affine", "pow2", "kmeans", "fp16", "bf16")
GRANULARITIES = ("per-tensor", "per-channel", "per-group")


@dataclass(frozen=True)
class QuantSpec:
    """One tensor's quantization scheme.

    ``affine`` is uniform ("direct") quantization, symmetric or asymmetric; ``pow2`` uses
    logarithmic levels ``±scale·2^-k``; ``kmeans`` a learned codebook of ``2^bits`` values;
    ``fp16``/``bf16`` are casts. ``axis`` is the channel axis for per-channel and per-group.
    """

    scheme: str = "affine"
    bits: int = 8
    symmetric: bool = True
    signed: bool = True
    narrow_range: bool = False
    granularity: str = "per-tensor"
    axis: int = 0
    group_size: int = 128

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"scheme={self.scheme!r}: allowed values are {', '.join(SCHEMES)}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity={self.granularity!r}: allowed values are {', '.join(GRANULARITIES)}")
        if self.scheme in ("affine", "pow2", "kmeans") and not 2 <= self.bits <= 16:
            raise ConfigError(f"bits={self.bits}: integer schemes take 2 to 16 bits")
        if self.group_size < 1:
            raise ConfigError(f"group_size={self.group_size} must be >= 1")

    @property
    def is_float(self) -> bool:
        return self.scheme in ("fp16", "bf16")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1 if not self.signed else 2 ** (self.bits - 1) - 1
