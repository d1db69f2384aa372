"""The exact minimiser of a purely quadratic energy (``E.is_quadratic``) by conjugate gradients.

A quadratic energy has a constant Hessian ``H`` and ``grad E(y) = H y - b``, so
``H v = grad E(y + v) - grad E(y)`` exactly; the solver is matrix-free and uses only ``E.grad``.

``"conjugate_gradient"`` (:class:`ConjugateGradient`): preconditioned CG on ``H y = b``
with the block preconditioner :math:`(P r)_i = A_i^{-1} r_i`,

.. math::

    \\alpha_k = \\frac{r_k^\\top z_k}{p_k^\\top H p_k}, \\quad
    y_{k+1} = y_k + \\alpha_k p_k, \\quad r_{k+1} = r_k - \\alpha_k H p_k, \\quad
    z_{k+1} = P r_{k+1}, \\quad p_{k+1} = z_{k+1} + \\frac{r_{k+1}^\\top z_{k+1}}{r_k^\\top z_k} p_k ,

with ``r = -grad E``; at most ``C H W`` iterations in exact arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Solver, StepOutput, sample_dot, sample_norm
from .preconditioners.options import Preconditioned, make_preconditioner
from .problem import Problem
from .quadratic_part import hessian_vector_product, require_quadratic

__all__ = ["ConjugateGradient", "ConjugateGradientState"]


@dataclass
class ConjugateGradientState:
    r"""Preconditioned CG's state: the preconditioner ``P`` (:math:`P \approx H^{-1}`), the search
    direction ``p`` and, per sample, :math:`r^\top z` with :math:`r = -\nabla E` the residual and
    :math:`z = P r` (``[B]``)."""

    P: Callable[[Tensor], Tensor]
    p: Tensor
    rz: Tensor


class ConjugateGradient(Preconditioned, Solver):
    """Matrix-free preconditioned conjugate gradients for quadratic energies.

    Args:
        precondition: ``"blocks"`` (inverse curvature blocks, the default; ``True`` too),
            ``"fft"`` (inverse circulant approximation: exact for circular boundaries, so
            CG then ends in one step), ``"chebyshev"``
            (:class:`~energycrf.solvers.preconditioners.chebyshev.ChebyshevPreconditioner`) or
            ``"none"`` (``False``).
        degree: with ``precondition="chebyshev"``, its degree (``None``: automatic).
        start_degree: with ``precondition="chebyshev"`` and ``y0="quadratic"``, the start's degree
            (``None``: automatic, accuracy
            :data:`~energycrf.solvers.preconditioners.chebyshev.CHEBYSHEV_START_ACCURACY`).
    """

    name = "conjugate_gradient"
    monotone = True
    quadratic_only = True  # refuses a non-quadratic energy in check(), before any work

    def __init__(self, precondition: str | bool = "blocks", degree: int | None = None,
                 start_degree: int | None = None):
        self._set_preconditioner(precondition, degree, start_degree)

    def check(self, problem: Problem, y0: Tensor) -> None:
        require_quadratic(problem, self.name)
        super().check(problem, y0)

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> ConjugateGradientState:
        P = make_preconditioner(self.precondition, problem, y, degree=self.degree) or (lambda r: r)
        z = P(-g)
        return ConjugateGradientState(P=P, p=z, rz=sample_dot(-g, z))

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: ConjugateGradientState) -> StepOutput:
        p, rz = state.p, state.rz
        tiny = torch.finfo(y.dtype).tiny
        Hp = hessian_vector_product(problem, y, g, p)
        pHp = sample_dot(p, Hp)
        neg = ~(pHp > 0) & (sample_norm(p) > 0)  # a direction of non-positive curvature
        alpha = torch.where(pHp > 0, rz / torch.where(pHp > 0, pHp, torch.ones_like(pHp)), torch.zeros_like(pHp))
        a4 = alpha.view(-1, 1, 1, 1)
        y_new = y + a4 * p
        g_new = g + a4 * Hp  # the residual recurrence r = -g
        z = state.P(-g_new)
        rz_new = sample_dot(-g_new, z)
        beta = rz_new / rz.clamp_min(tiny)
        state.p = z + beta.view(-1, 1, 1, 1) * p
        state.rz = rz_new
        return StepOutput(
            y=y_new,
            energy=problem.energy(y_new),
            grad=g_new,
            diverged=neg,
            diverge_reason="the Hessian has a direction of non-positive curvature: the quadratic is unbounded below",
        )
