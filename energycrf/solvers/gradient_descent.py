"""Gradient descent with a backtracking (Armijo) line search, per sample.

.. math::

    y^{(t+1)} = y^{(t)} - \\alpha_t g, \\qquad
    E(y - \\alpha_t g) \\le E(y) - c_1 \\alpha_t \\|g\\|^2 ,

where :math:`\\alpha_t` starts at ``grow`` times the last accepted step and is multiplied by
``shrink`` until the sufficient-decrease condition holds
(:func:`~energycrf.solvers.line_search.armijo_backtracking`). The first trial step is
``1 / L`` with ``L`` the largest curvature-block eigenvalue when the blocks are positive,
else ``1 / ||g||``. Slow but monotone and assumption-free: a reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .base import Problem, Solver, StepOutput, sample_dot
from .host import _device_values, _host
from .line_search import armijo_backtracking

__all__ = ["GradientDescent", "GradientDescentState"]


@dataclass
class GradientDescentState:
    """Gradient descent's memory between steps.

    Attributes:
        alpha: ``[B]`` the next first trial step :math:`\\alpha` per sample (``grow`` times the
            last accepted one), a tensor of the problem's dtype and device (it may carry the
            autograd graph of the curvature it came from, when steps are differentiated).
        fused: evaluate the gradient with the first trial's energy: the last first trial passed
            for every sample, so this one likely will too.
    """

    alpha: Tensor
    fused: bool = True


class GradientDescent(Solver):
    """Steepest descent with backtracking.

    Args:
        c1: Armijo constant in ``(0, 1)``.
        shrink: backtracking factor in ``(0, 1)``.
        grow: the next trial step is ``grow`` times the last accepted one.
        max_backtracks: trials per iteration before the sample is reported stalled.
        step_size: the initial trial step (default: from the curvature blocks).
    """

    name = "gradient_descent"
    monotone = True

    def __init__(
        self,
        c1: float = 1e-4,
        shrink: float = 0.5,
        grow: float = 2.0,
        max_backtracks: int = 40,
        step_size: float | None = None,
    ):
        if not 0.0 < c1 < 1.0:
            raise ValueError(f"c1: expected a number in (0, 1), got {c1!r}")
        if not 0.0 < shrink < 1.0:
            raise ValueError(f"shrink: expected a number in (0, 1), got {shrink!r}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size: expected a positive number or None, got {step_size!r}")
        self.c1, self.shrink, self.grow = float(c1), float(shrink), float(grow)
        self.max_backtracks, self.step_size = int(max_backtracks), step_size

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> GradientDescentState:
        if self.step_size is not None:
            alpha = torch.full_like(e, float(self.step_size))
        else:
            A = problem.curvature(y)
            lam = torch.linalg.eigvalsh(0.5 * (A + A.transpose(-1, -2)))
            L = lam.flatten(1).amax(1)
            gn = g.flatten(1).norm(dim=1).clamp_min(torch.finfo(y.dtype).tiny)
            alpha = torch.where(L > 0, 1.0 / L.clamp_min(torch.finfo(y.dtype).tiny), 1.0 / gn)
        return GradientDescentState(alpha=alpha)

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: GradientDescentState) -> StepOutput:
        # the search runs along d = alpha g with unit first trial: y - a alpha g, a = 1, shrink, ...
        alpha = state.alpha
        d = alpha.view(-1, 1, 1, 1) * g
        e_h, decrease = _host(e, alpha * sample_dot(g, g))  # E(y) and alpha ||g||^2 = -g^T (-d)
        search = armijo_backtracking(problem, y, e, g, d, energy=e_h, slope=-decrease, sign=-1.0, c1=self.c1,
                                     max_backtracks=self.max_backtracks, shrink=self.shrink, fused=state.fused)
        state.fused = bool(search.first_ok.all())  # after a backtracking search, a grown step often backtracks again
        a = search.step
        state.alpha = alpha * _device_values(np.where(search.ok, a * self.grow, a), alpha)
        return search.step_output(f"no Armijo step found in {self.max_backtracks} halvings")
