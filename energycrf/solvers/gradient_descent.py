"""Gradient descent with a backtracking (Armijo) line search, per sample.

.. math::

    y^{(t+1)} = y^{(t)} - \\alpha_t g, \\qquad
    E(y - \\alpha_t g) \\le E(y) - c_1 \\alpha_t \\|g\\|^2 ,

where :math:`\\alpha_t` starts at ``grow`` times the last accepted step and is halved
until the sufficient-decrease condition holds. The first trial step is ``1 / L`` with
``L`` the largest curvature-block eigenvalue when the blocks are positive, else
``1 / ||g||``. Slow but monotone and assumption-free: a reference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Problem, Solver, StepOutput, accepted_point, sample_dot

__all__ = ["GradientDescent"]


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

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> Any:
        if self.step_size is not None:
            alpha = torch.full_like(e, float(self.step_size))
        else:
            A = problem.curvature(y)
            lam = torch.linalg.eigvalsh(0.5 * (A + A.transpose(-1, -2)))
            L = lam.flatten(1).amax(1)
            gn = g.flatten(1).norm(dim=1).clamp_min(torch.finfo(y.dtype).tiny)
            alpha = torch.where(L > 0, 1.0 / L.clamp_min(torch.finfo(y.dtype).tiny), 1.0 / gn)
        return {"alpha": alpha, "fused": True}

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: Any) -> StepOutput:
        alpha = state["alpha"]
        gg = sample_dot(g, g)
        # the predicted decrease is below round-off: a failed search then means "converged"
        roundoff = alpha * gg <= 16 * torch.finfo(y.dtype).eps * e.abs()
        y_try = y - alpha.view(-1, 1, 1, 1) * g
        fused = state["fused"]
        if fused:  # the last first trial passed: this one likely will, and its gradient is ready
            e_try, g_try = problem.energy_and_grad(y_try)
        else:  # it backtracked (a grown step often does again): energies first, the gradient once accepted
            e_try, g_try = problem.energy(y_try), g
        ok = e_try <= e - self.c1 * alpha * gg
        first_ok = ok if fused else torch.zeros_like(ok)  # which samples hold their trial's gradient
        state["fused"] = bool(ok.all())
        for _ in range(self.max_backtracks):
            if bool(ok.all()):
                break
            alpha = torch.where(ok, alpha, alpha * self.shrink)
            y_try = torch.where(ok.view(-1, 1, 1, 1), y_try, y - alpha.view(-1, 1, 1, 1) * g)
            e_try = torch.where(ok, e_try, problem.energy(y_try))
            ok = e_try <= e - self.c1 * alpha * gg
        state["alpha"] = torch.where(ok, alpha * self.grow, alpha)
        y_new, e_new, g_new = accepted_point(problem, y, e, g, y_try, e_try, g_try, first_ok, ok)
        return StepOutput(
            y=y_new,
            energy=e_new,
            grad=g_new,
            accepted=ok | roundoff,
            stalled=~ok & ~roundoff,
            stall_reason=f"no Armijo step found in {self.max_backtracks} halvings",
        )
