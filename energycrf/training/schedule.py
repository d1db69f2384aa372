"""Learning-rate schedule: linear warm-up followed by cosine decay (paper section 4).

The paper trains with AdamW and a cosine-decay learning rate with 5000 warm-up steps
(initial rate 1e-3 in stage 1, 1e-5 in stage 2). With ``t`` the optimiser step,
``T_w`` the warm-up length and ``T`` the total number of steps, the multiplier applied
to the base rate is

    f(t) = (t + 1) / T_w                                            for t < T_w
    f(t) = r + (1 - r) * 1/2 * (1 + cos(pi * (t - T_w) / (T - T_w)))  otherwise

with ``r`` the final fraction of the base rate (``min_lr_ratio``, 0 by default).
"""

from __future__ import annotations

import math

import torch

__all__ = ["WarmupCosine", "warmup_cosine_scheduler"]


class WarmupCosine:
    """The multiplier ``f(t)`` above, as a plain callable holding only numbers.

    A class (not a closure) so that ``LambdaLR.state_dict()`` records its parameters
    and the schedule can be saved as JSON.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected an int >= 0, got {warmup_steps!r}")
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps: expected an int >= 1, got {total_steps!r}")
        if not 0.0 <= float(min_lr_ratio) <= 1.0:
            raise ValueError(f"min_lr_ratio: expected a float in [0, 1], got {min_lr_ratio!r}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :class:`WarmupCosine` to every parameter group."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio)
    )
