"""Linear probe done right: the head fit to convergence on cached features, L2 strength chosen on val.

A few SGD epochs leave a linear head far from its optimum (our defaults landed 7-20 pt below a
scikit-learn LogisticRegression on the same features). The problem is convex and small, so we solve
it: standardize the features, run full-batch L-BFGS on the L2-regularized cross-entropy for each
strength of a small grid, keep the one with the best validation accuracy (ties: stronger L2), and
fold the standardization into the head's weights so the model needs no extra op.

Features whose spread is below the median are divided by the median spread, not their own: dividing
near-dead features by their tiny spread folded weights of up to 45 into the head, which then
amplified int8 input noise (lp-ft + static int8 fell from 96.3% float to 48% in simulation); with the
floor the largest weight is 0.6 and test accuracy on digits features is 94.7% (vs 94.4% unfloored).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
STD_FLOOR = 1.0


@dataclass(frozen=True)
class ProbeFit:
    l2: float
    val_accuracy: float
    train_loss: float
    iterations: int


def _solve(x: torch.Tensor, y: torch.Tensor, l2: float, weight: torch.Tensor | None, max_iter: int,
           start: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
    w, b = (t.clone().requires_grad_(True) for t in start)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y, weight=weight) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = F.cross_entropy(x @ w.T + b, y, weight=weight) + l2 * w.pow(2).sum()
    return w.detach(), b.detach(), float(loss)


@torch.no_grad()
def fit_linear_probe(head: nn.Linear, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                     class_weight: torch.Tensor | None = None, grid: tuple[float, ...] = L2_GRID,
                     max_iter: int = 100) -> ProbeFit:
    """Set ``head`` to the L2-regularized logistic regression on ``train`` features that scores best on ``val``."""
    xt, yt = train[0].double().flatten(1), train[1]
    mean, std = xt.mean(0), xt.std(0)
    std = std.clamp(min=max(float(STD_FLOOR * std.median()), 1e-6))
    xt = (xt - mean) / std
    xv, yv = (val[0].double().flatten(1) - mean) / std, val[1]
    weight = None if class_weight is None else class_weight.double()
    best: tuple[float, float, torch.Tensor, torch.Tensor, float] | None = None
    start = (torch.zeros(head.out_features, xt.shape[1], dtype=torch.float64),
             torch.zeros(head.out_features, dtype=torch.float64))
    for l2 in sorted(grid, reverse=True):  # strongest first (on ties the simpler model wins), each warm-started
        with torch.enable_grad():
            w, b, loss = _solve(xt, yt, l2, weight, max_iter, start)
        start = (w, b)
        acc = float(((xv @ w.T + b).argmax(1) == yv).double().mean()) if len(yv) else -loss
        if best is None or acc > best[0]:
            best = (acc, l2, w, b, loss)
    acc, l2, w, b, loss = best
    head.weight.copy_((w / std).to(head.weight.dtype))  # fold the standardization into the head
    if head.bias is not None:
        head.bias.copy_((b - (w * mean / std).sum(1)).to(head.bias.dtype))
    log.info("linear probe: L-BFGS on %d cached features, L2 %.0e chosen on validation (val acc %.4f)",
             len(yt), l2, acc)
    return ProbeFit(l2, acc, loss, max_iter)
