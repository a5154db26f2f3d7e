"""``lr="auto"``: a learning-rate range test (Smith 2017, as in fastai's ``lr_find``).

The learning rate grows exponentially over up to ``steps`` batches while the smoothed training loss is
recorded; the test stops once the loss has blown up. The pick is a tenth of the rate at the lowest
smoothed loss (fastai's classic rule): still on the steep, stable side of the curve. Model, optimizer
and RNG state are restored afterwards, so the test leaves no trace but its choice.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from finequant.errors import ConfigError
from finequant.models.base import forward, to_device


@dataclass(frozen=True)
class LRFinding:
    lr: float
    """The pick: a tenth of ``lr_at_min``."""
    lr_at_min: float
    steps: int
    lrs: list[float]
    losses: list[float]
    """Smoothed (bias-corrected EMA) training loss at each rate."""

    def reason(self) -> str:
        return (f"range test over {self.steps} batches ({self.lrs[0]:.0e} -> {self.lrs[-1]:.1e}): smoothed loss "
                f"lowest at {self.lr_at_min:.2e}, a tenth of that")


def find_lr(model: nn.Module, make_opt: Callable[[float], torch.optim.Optimizer], batches: Iterable,
            device: torch.device, *, steps: int = 100, start: float = 1e-6, end: float = 1.0,
            smoothing: float = 0.9) -> LRFinding:
    """Run the range test on ``model`` with the optimizer ``make_opt(lr)`` builds (its groups keep their
    ratios to ``lr``), cycling through ``batches`` (inputs, labels)."""
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    opt = make_opt(start)
    base = [g["lr"] / start for g in opt.param_groups]
    factor = (end / start) ** (1 / max(1, steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    try:  # in the train/eval modes the caller set (frozen BatchNorm stays in eval mode)
        for step, (inputs, y) in enumerate(itertools.islice(_cycle(batches), steps), start=1):
            lr = start * factor ** (step - 1)
            for g, b in zip(opt.param_groups, base):
                g["lr"] = lr * b
            loss = F.cross_entropy(forward(model, to_device(inputs, device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not math.isfinite(loss.item()):
                break
            avg = smoothing * avg + (1 - smoothing) * loss.item()
            lrs.append(lr)
            losses.append(avg / (1 - smoothing**step))
            best = min(best, losses[-1])
            if step > 5 and losses[-1] > 4 * best:
                break
    finally:
        model.load_state_dict(state)
        torch.set_rng_state(rng)
    if not losses:
        raise ConfigError("lr=auto: the learning-rate range test saw no finite loss; give a number (--lr 1e-3) "
                          "and check the data")
    at_min = lrs[losses.index(min(losses))]
    return LRFinding(at_min / 10, at_min, len(lrs), lrs, losses)


def _cycle(batches: Iterable) -> Iterator:
    """``batches`` again and again (a DataLoader reshuffles each pass); stops if it is empty."""
    while True:
        seen = False
        for b in batches:
            seen = True
            yield b
        if not seen:
            return
