"""Bit-packing of integer codes, so a b-bit weight takes b bits on disk (int4 -> half a byte)."""

from __future__ import annotations

import numpy as np
import torch


def pack_codes(codes: torch.Tensor, bits: int, offset: int) -> torch.Tensor:
    """``codes`` in ``[offset, offset + 2^bits)`` -> uint8 tensor of ``ceil(numel * bits / 8)`` bytes."""
    v = (codes.flatten().to(torch.int64) - offset).numpy().astype(np.uint32)
    if v.size and (v.max() >= 1 << bits):
        raise ValueError(f"codes do not fit in {bits} bits after offset {offset}")
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_codes(packed: torch.Tensor, bits: int, offset: int, shape: tuple[int, ...]) -> torch.Tensor:
    n = int(np.prod(shape)) if shape else 1
    planes = np.unpackbits(packed.numpy(), bitorder="little")[: n * bits].reshape(n, bits).astype(np.int64)
    v = (planes << np.arange(bits, dtype=np.int64)).sum(axis=1) + offset
    return torch.from_numpy(v.astype(np.int32)).reshape(shape)
