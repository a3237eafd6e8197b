"""LARS (You et al. 2017) and the warm-up + cosine learning-rate schedule of the paper's recipe.

One LARS step for a parameter p with gradient g, in a group with ``lars=True``::

    u = g + wd * p
    q = eta * ||p|| / ||u||      (q = 1 when ||p|| = 0 or ||u|| = 0)
    m = momentum * m + q * u
    p = p - lr * m

Groups with ``lars=False`` (biases and norm parameters, see :func:`lars_param_groups`) skip both
the weight decay and the trust ratio: ``m = momentum * m + g``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum (no sync points: the ratio stays on device).

    >>> p = nn.Parameter(torch.tensor([3.0, 4.0]))
    >>> opt = LARS([p], lr=1.0, weight_decay=0.0, momentum=0.9, trust_coefficient=0.1)
    >>> p.grad = torch.tensor([0.6, 0.8]); opt.step()
    >>> p.data  # q = 0.1 * 5 / 1 = 0.5, so p - 0.5 * g
    tensor([2.7000, 3.6000])
    """

    def __init__(
        self,
        params: Iterable,
        *,
        lr: float,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if group["lars"]:
                    update = update.add(p, alpha=group["weight_decay"])
                    p_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    ratio = torch.where(
                        (p_norm > 0) & (u_norm > 0),
                        group["trust_coefficient"] * p_norm / u_norm,
                        torch.ones_like(p_norm),
                    )
                    update = update.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss


def lars_param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Two groups: weights (decay + LARS) and biases / norm parameters (neither).

    A parameter is excluded when it has one dimension (biases, BN/LN scales and shifts, the
    diagonal projector's vector): the usual rule, also the paper's (PAPER.md s.3).
    """
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": 0.0, "lars": False},
    ]


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, final_ratio: float = 0.001) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up to 1, then cosine to ``final_ratio``.

    ``(step + 1) / warmup_steps`` during warm-up; afterwards, with ``t`` going from 0 to 1,
    ``final_ratio + (1 - final_ratio) * (1 + cos(pi t)) / 2``.

    >>> [round(warmup_cosine(s, total_steps=10, warmup_steps=2, final_ratio=0.0), 3) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
