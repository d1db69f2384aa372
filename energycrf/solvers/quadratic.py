"""Exact minimisers of purely quadratic energies (``E.is_quadratic``).

A quadratic energy has a constant Hessian ``H`` and ``grad E(y) = H y - b``, so
``H v = grad E(y + v) - grad E(y)`` exactly; both solvers below are matrix-free and use
only ``E.grad``.

``"conjugate_gradient"`` (:class:`ConjugateGradient`): preconditioned CG on ``H y = b``
with the block preconditioner :math:`(P r)_i = A_i^{-1} r_i`,

.. math::

    \\alpha_k = \\frac{r_k^\\top z_k}{p_k^\\top H p_k}, \\quad
    y_{k+1} = y_k + \\alpha_k p_k, \\quad r_{k+1} = r_k - \\alpha_k H p_k, \\quad
    z_{k+1} = P r_{k+1}, \\quad p_{k+1} = z_{k+1} + \\frac{r_{k+1}^\\top z_{k+1}}{r_k^\\top z_k} p_k ,

with ``r = -grad E``; at most ``C H W`` iterations in exact arithmetic.

``"fft"`` (:class:`FFTSolver`): when the energy is also translation invariant with a
circular boundary (Unary + Pairwise with a stationary kernel, ``E.periodic``), ``H`` is a
block-circulant convolution, :math:`(H v)_p = \\sum_q K_{p - q} v_q` with ``C x C`` taps
``K``. Its impulse responses (``C`` gradient calls) give ``K``; a 2-D FFT diagonalises it
into one ``C x C`` matrix :math:`\\hat K(\\omega)` per frequency, and

.. math::  y^\\star = y - \\mathcal F^{-1}\\big[ \\hat K(\\omega)^{-1} \\, \\widehat{\\nabla E(y)}(\\omega) \\big]

is the exact minimiser, in ``O(C^3 HW + C^2 HW log HW)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Problem, Solver, StepOutput, _positive_definite_blocks, sample_dot, sample_norm

__all__ = ["ConjugateGradient", "FFTSolver", "hessian_vector_product"]

_NOT_QUADRATIC = (
    "{name} minimises purely quadratic energies only (Unary, Pairwise and their sums; "
    "E.is_quadratic is False for {kind}). Use method='coordinate_descent', 'mean_field', "
    "'lbfgs' or 'gradient_descent'."
)


def hessian_vector_product(problem: Problem, y: Tensor, g: Tensor, v: Tensor) -> Tensor:
    """``H v`` of a quadratic energy from two gradients: ``(grad(y + s v) - grad(y)) / s``.

    ``s`` (per sample) makes ``s v`` as large as ``y`` so the difference is not lost to
    round-off; exact up to rounding because ``grad`` is affine.
    """
    vn = sample_norm(v).clamp_min(torch.finfo(v.dtype).tiny)
    s = (1.0 + sample_norm(y)) / vn
    s4 = s.view(-1, 1, 1, 1)
    return (problem.grad(y + s4 * v) - g) / s4


def _require_quadratic(problem: Problem, name: str) -> None:
    if not problem.is_quadratic:
        raise ValueError(_NOT_QUADRATIC.format(name=name, kind=type(problem.E).__name__))


class ConjugateGradient(Solver):
    """Matrix-free (block-Jacobi preconditioned) conjugate gradients for quadratic energies.

    Args:
        precondition: use the inverse curvature blocks ``A_i^{-1}`` as preconditioner.
    """

    name = "conjugate_gradient"
    monotone = True

    def __init__(self, precondition: bool = True):
        self.precondition = bool(precondition)

    def check(self, problem: Problem, y0: Tensor) -> None:
        _require_quadratic(problem, self.name)

    def _P(self, state: Any, r: Tensor) -> Tensor:
        L = state["L"]
        if L is None:
            return r
        rhs = r.permute(0, 2, 3, 1).unsqueeze(-1)
        return torch.cholesky_solve(rhs, L).squeeze(-1).permute(0, 3, 1, 2)

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> Any:
        state: dict[str, Any] = {"L": None}
        if self.precondition:
            state["L"] = torch.linalg.cholesky(_positive_definite_blocks(problem.curvature(y)))
        r = -g
        z = self._P(state, r)
        state.update(p=z, rz=sample_dot(r, z))
        return state

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: Any) -> StepOutput:
        p, rz = state["p"], state["rz"]
        tiny = torch.finfo(y.dtype).tiny
        Hp = hessian_vector_product(problem, y, g, p)
        pHp = sample_dot(p, Hp)
        neg = ~(pHp > 0) & (sample_norm(p) > 0)  # a direction of non-positive curvature
        alpha = torch.where(pHp > 0, rz / torch.where(pHp > 0, pHp, torch.ones_like(pHp)), torch.zeros_like(pHp))
        a4 = alpha.view(-1, 1, 1, 1)
        y_new = y + a4 * p
        g_new = g + a4 * Hp  # the residual recurrence r = -g
        z = self._P(state, -g_new)
        rz_new = sample_dot(-g_new, z)
        beta = rz_new / rz.clamp_min(tiny)
        state["p"] = z + beta.view(-1, 1, 1, 1) * p
        state["rz"] = rz_new
        return StepOutput(
            y=y_new,
            energy=problem.energy(y_new),
            grad=g_new,
            diverged=neg,
            diverge_reason="the Hessian has a direction of non-positive curvature: the quadratic is unbounded below",
        )


class FFTSolver(Solver):
    """Exact minimiser of a translation-invariant quadratic with circular boundary, by FFT.

    Raises ``ValueError`` unless ``E.is_quadratic`` and ``E.periodic``, and when a random
    probe shows the Hessian is not a circular convolution (e.g. position-dependent terms).

    Args:
        check_tol: relative tolerance of that probe (default: ``sqrt(eps)`` of the dtype).
    """

    name = "fft"
    monotone = True

    def __init__(self, check_tol: float | None = None):
        self.check_tol = check_tol

    def check(self, problem: Problem, y0: Tensor) -> None:
        _require_quadratic(problem, self.name)
        if not bool(getattr(problem.E, "periodic", False)):
            raise ValueError(
                "fft: the FFT diagonalisation needs a circular boundary (E.periodic is False for "
                f"{type(problem.E).__name__}; e.g. Pairwise with zero padding). Use "
                "method='conjugate_gradient' (exact for any quadratic energy)."
            )

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> Any:
        B, C, H, W = y.shape
        taps = torch.empty(B, C, C, H, W, dtype=y.dtype, device=y.device)  # [b, out, in, h, w]
        for ci in range(C):
            v = torch.zeros_like(y)
            v[:, ci, 0, 0] = 1.0
            taps[:, :, ci] = hessian_vector_product(problem, y, g, v)
        K = torch.fft.rfft2(taps).permute(0, 3, 4, 1, 2)  # [B, H, W//2+1, out, in]
        # the Hessian must be this convolution: test it on a random probe
        gen = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
        Hv = hessian_vector_product(problem, y, g, v)
        Hv_fft = self._apply(K, v)
        tol = self.check_tol if self.check_tol is not None else torch.finfo(y.dtype).eps ** 0.5
        err = sample_norm(Hv - Hv_fft) / sample_norm(Hv).clamp_min(torch.finfo(y.dtype).tiny)
        if bool((err > tol).any()):
            raise ValueError(
                f"fft: the energy's Hessian is not a circular convolution (relative mismatch "
                f"{float(err.max()):.2e} > {tol:.1e}): a term depends on position or the boundary "
                "is not circular. Use method='conjugate_gradient'."
            )
        return {"K": K}

    @staticmethod
    def _apply(K: Tensor, v: Tensor) -> Tensor:
        H, W = v.shape[-2:]
        vh = torch.fft.rfft2(v).permute(0, 2, 3, 1).unsqueeze(-1)  # [B, H, W', C, 1]
        out = (K @ vh).squeeze(-1).permute(0, 3, 1, 2)
        return torch.fft.irfft2(out, s=(H, W))

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: Any) -> StepOutput:
        H, W = y.shape[-2:]
        gh = torch.fft.rfft2(g).permute(0, 2, 3, 1).unsqueeze(-1)
        sol, info = torch.linalg.solve_ex(state["K"], gh)
        singular = (info.flatten(1) != 0).any(1)
        d = torch.fft.irfft2(sol.squeeze(-1).permute(0, 3, 1, 2), s=(H, W))
        y_new = y - d
        return StepOutput(
            y=y_new,
            energy=problem.energy(y_new),
            done=~singular,
            diverged=singular,
            diverge_reason="the Hessian is singular at some frequency: the minimiser is not unique",
        )
