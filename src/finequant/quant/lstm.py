"""LSTM as gate projections: ``nn.LSTM`` rewritten so that each weight matrix is an ``nn.Linear``.

An LSTM's compute is two matrix products per layer and direction (input -> 4 gates, hidden -> 4
gates) plus element-wise gate math. Rewriting it with ``nn.Linear`` gate projections lets every
quantization method treat those products like any Linear (dynamic int8 measures the range of the
input and of the hidden state at each step, as torch.ao's dynamic LSTM does) and lets the
quantized artifact and packing code stay single-path. The element-wise gate math stays float.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from finequant.errors import FinequantError


class GateLSTM(nn.Module):
    """Same function as the ``nn.LSTM`` it is built from (gate order i, f, g, o), unrolled in time.

    Children ``l{k}`` (and ``l{k}_reverse``) hold ``ih`` and ``hh`` Linear layers.
    """

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.hidden_size, self.num_layers = lstm.hidden_size, lstm.num_layers
        self.batch_first, self.bidirectional, self.dropout = lstm.batch_first, lstm.bidirectional, lstm.dropout
        self.cells = nn.ModuleDict()
        for k in range(lstm.num_layers):
            for suffix in ("", "_reverse") if lstm.bidirectional else ("",):
                cell = nn.Module()
                for kind in ("ih", "hh"):
                    w = getattr(lstm, f"weight_{kind}_l{k}{suffix}")
                    linear = nn.Linear(w.shape[1], w.shape[0], bias=lstm.bias)
                    with torch.no_grad():
                        linear.weight.copy_(w)
                        if lstm.bias:
                            linear.bias.copy_(getattr(lstm, f"bias_{kind}_l{k}{suffix}"))
                    setattr(cell, kind, linear)
                self.cells[f"l{k}{suffix}"] = cell

    def _run(self, cell: nn.Module, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
             reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gates_x = cell.ih(x)  # (T, B, 4H): the input projection for all steps at once
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        out: list[torch.Tensor] = [x.new_empty(0)] * x.shape[0]
        for t in steps:
            i, f, g, o = (gates_x[t] + cell.hh(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out[t] = h
        return torch.stack(out), h, c

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(x, PackedSequence):
            raise FinequantError("quantized LSTM takes padded tensors, not PackedSequence; pad the batch "
                                 "(torch.nn.utils.rnn.pad_packed_sequence) or skip the LSTM in QuantConfig")
        unbatched = x.dim() == 2  # (L, H_in) whatever batch_first says
        batch_first = self.batch_first and not unbatched
        x = x.unsqueeze(1) if unbatched else x.transpose(0, 1) if batch_first else x
        dirs = 2 if self.bidirectional else 1
        if hx is None:
            zeros = x.new_zeros(self.num_layers * dirs, x.shape[1], self.hidden_size)
            hx = (zeros, zeros)
        elif unbatched:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        h_n, c_n = [], []
        for k in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(("", "_reverse")[:dirs]):
                idx = k * dirs + d
                y, h, c = self._run(self.cells[f"l{k}{suffix}"], x, hx[0][idx], hx[1][idx], reverse=d == 1)
                outs.append(y)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(outs, dim=-1)
            if self.training and self.dropout and k < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout)
        if batch_first:
            x = x.transpose(0, 1)
        h_n_t, c_n_t = torch.stack(h_n), torch.stack(c_n)
        if unbatched:
            x, h_n_t, c_n_t = x.squeeze(1), h_n_t.squeeze(1), c_n_t.squeeze(1)
        return x, (h_n_t, c_n_t)


def split_lstms(net: nn.Module) -> list[str]:
    """Replace every ``nn.LSTM`` in ``net`` by an equivalent :class:`GateLSTM`; returns their names.

    LSTMs with ``proj_size`` (a third weight per layer) are left as they are, and so stay in float."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.LSTM) and n and not m.proj_size]
    for name in names:
        net.set_submodule(name, GateLSTM(net.get_submodule(name)))
    return names
