"""Parallel mean-field: the site-wise majoriser step at every site at once (Jacobi).

.. math::

    y^{(t+1)} = y^{(t)} - \\lambda \\, A^{-1} g, \\qquad
    (A^{-1} g)_i = A_i^{-1} \\, \\nabla_i E(y^{(t)}) ,

with damping :math:`\\lambda \\in (0, 1]`. With ``lambda = 1`` on Unary (``w = 1``) +
Pairwise + the paper's FoE (``A_i = 2 I + 2 d_i M``) this is exactly the paper's eq. (9)
done in parallel, ``y_i = K^{-1}(x_i + M (W^s y)_i + 1/2 sum_m [J_m^- * relu(J_m * y)]_i)``
with ``K = I + d_i M``. On a quadratic energy it is block Jacobi. Unlike coordinate
descent it is not monotone: the driver records the energy and reports divergence.

Adaptive damping (``adaptive=True``) rejects a step that raises a sample's energy,
multiplies that sample's ``lambda`` by ``backoff`` and tries again next iteration; an
accepted step multiplies it by ``grow`` (capped at the initial ``damping``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Problem, Solver, StepOutput, block_solve

__all__ = ["MeanField", "MeanFieldState"]


@dataclass
class MeanFieldState:
    """Mean-field's memory between steps.

    Attributes:
        lam: ``[B]`` the damping :math:`\\lambda` per sample (fixed, or adapted when ``adaptive``).
    """

    lam: Tensor


class MeanField(Solver):
    """Jacobi / parallel mean-field update with fixed or adaptive damping.

    Args:
        damping: ``lambda`` in ``(0, 1]`` (the initial one when adaptive).
        adaptive: back off (``lambda *= backoff``) when the energy rises.
        backoff: factor in ``(0, 1)``.
        grow: factor ``>= 1`` applied after an accepted adaptive step.
        min_damping: a sample whose ``lambda`` falls below this is reported stalled.
    """

    name = "mean_field"

    def __init__(
        self,
        damping: float = 1.0,
        adaptive: bool = False,
        backoff: float = 0.5,
        grow: float = 1.1,
        min_damping: float = 1e-8,
    ):
        if not 0.0 < float(damping) <= 1.0:
            raise ValueError(f"damping: expected a number in (0, 1], got {damping!r}")
        if not 0.0 < float(backoff) < 1.0:
            raise ValueError(f"backoff: expected a number in (0, 1), got {backoff!r}")
        if float(grow) < 1.0:
            raise ValueError(f"grow: expected a number >= 1, got {grow!r}")
        self.damping, self.adaptive = float(damping), bool(adaptive)
        self.backoff, self.grow, self.min_damping = float(backoff), float(grow), float(min_damping)

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> MeanFieldState:
        return MeanFieldState(lam=torch.full_like(e, self.damping))

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: MeanFieldState) -> StepOutput:
        lam = state.lam
        d = block_solve(problem.curvature(y), g)
        y_new = y - lam.view(-1, 1, 1, 1) * d
        e_new, g_new = problem.energy_and_grad(y_new)  # one fused evaluation
        if not self.adaptive:
            return StepOutput(y=y_new, energy=e_new, grad=g_new)
        ok = e_new <= e  # NaN -> rejected
        state.lam = torch.where(ok, torch.clamp(lam * self.grow, max=self.damping), lam * self.backoff)
        ok4 = ok.view(-1, 1, 1, 1)
        y_new = torch.where(ok4, y_new, y)
        g_new = torch.where(ok4, g_new, g)
        e_new = torch.where(ok, e_new, e)
        stalled = state.lam < self.min_damping
        return StepOutput(
            y=y_new,
            energy=e_new,
            grad=g_new,
            accepted=ok,
            stalled=stalled,
            stall_reason=f"adaptive damping fell below min_damping={self.min_damping:g}",
        )
