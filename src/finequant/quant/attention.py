"""``nn.MultiheadAttention`` rewritten with plain Linear projections, so quantization can reach them.

torch's ``MultiheadAttention`` multiplies by its packed ``in_proj_weight`` (a bare parameter) inside
``F.multi_head_attention_forward`` or a fused kernel, so no layer wrapper sees its projections: in
torchvision's ViT-B/16 that left a third of the weights float. :class:`PackedAttention` computes the same
function with ``in_proj`` and ``out_proj`` as ``nn.Linear`` and attention through
``F.scaled_dot_product_attention`` (whose two products the activation points quantize). torch.ao has a
quantizable MultiheadAttention too, but it is part of the deprecated torch.ao eager flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PackedAttention(nn.Module):
    """Same inputs, outputs and parameters as the ``nn.MultiheadAttention`` it is built from (packed
    q/k/v projection of equal embedding sizes)."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        e = mha.embed_dim
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = e, mha.num_heads, mha.dropout, mha.batch_first
        self._qkv_same_embed_dim = True  # read by nn.TransformerEncoderLayer's fast-path checks
        self.in_proj = nn.Linear(e, 3 * e, bias=mha.in_proj_bias is not None)
        with torch.no_grad():
            self.in_proj.weight.copy_(mha.in_proj_weight)
            if mha.in_proj_bias is not None:
                self.in_proj.bias.copy_(mha.in_proj_bias)
        self.out_proj = mha.out_proj
        self.train(mha.training)

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched, self_attention = query.dim() == 3, query is key and key is value
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if self.batch_first and batched:  # to (sequence, batch, embedding), as torch's own code works
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        e = self.embed_dim
        if self_attention:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:  # cross-attention: each input through the packed projection, its own third kept
            q, k, v = (self.in_proj(t)[..., i * e:(i + 1) * e] for i, t in enumerate((query, key, value)))
        n, b = q.shape[0], q.shape[1]
        h, d = self.num_heads, e // self.num_heads
        q, k, v = (t.reshape(t.shape[0], b * h, d).transpose(0, 1).reshape(b, h, t.shape[0], d) for t in (q, k, v))
        mask = _additive_mask(attn_mask, key_padding_mask, b, h, n, k.shape[2], q.dtype)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = torch.matmul(q, k.transpose(-2, -1)) / d ** 0.5
            if is_causal and mask is None:
                mask = _additive_mask(torch.ones(n, k.shape[2], dtype=torch.bool).triu(1), None, b, h, n,
                                      k.shape[2], q.dtype)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            out = torch.matmul(F.dropout(weights, dropout) if dropout else weights, v)
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=is_causal and mask is None)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(n, b, e))
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if weights is not None and not batched:
            weights = weights.squeeze(0)
        return out, weights


def _additive_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, b: int, h: int, n: int,
                   s: int, dtype: torch.dtype) -> torch.Tensor | None:
    """MultiheadAttention's masks (bool: True = may not attend; float: added) as one float mask [b, h, n, s]."""
    mask = None
    if attn_mask is not None:
        m = attn_mask if attn_mask.is_floating_point() else torch.zeros_like(attn_mask, dtype=dtype).masked_fill(
            attn_mask, float("-inf"))
        mask = m.reshape(b, h, n, s) if m.dim() == 3 else m.reshape(1, 1, n, s)
    if key_padding_mask is not None:
        kp = key_padding_mask if key_padding_mask.is_floating_point() else torch.zeros_like(
            key_padding_mask, dtype=dtype).masked_fill(key_padding_mask, float("-inf"))
        kp = kp.reshape(b, 1, 1, s)
        mask = kp if mask is None else mask + kp
    return mask


def split_attention(model: nn.Module) -> list[str]:
    """Replace every packed ``nn.MultiheadAttention`` in ``model`` with a :class:`PackedAttention`, in place.
    Returns the names of those left as they are (separate q/k/v sizes)."""
    kept = []
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.MultiheadAttention):
            if m._qkv_same_embed_dim and m.in_proj_weight is not None and m.bias_k is None and not m.add_zero_attn:
                model.set_submodule(name, PackedAttention(m))
            else:
                kept.append(name)
    return kept
