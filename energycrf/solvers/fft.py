"""The exact minimiser of a translation-invariant quadratic energy with a circular boundary.

``"fft"`` (:class:`FFTSolver`): when a quadratic energy (constant Hessian ``H``,
``grad E(y) = H y - b``) is also translation invariant with a circular boundary (Unary +
Pairwise with a stationary kernel, ``E.periodic``), ``H`` is a block-circulant convolution,
:math:`(H v)_p = \\sum_q K_{p - q} v_q` with ``C x C`` taps ``K``. Its impulse responses
(``C`` gradient calls) give ``K``; a 2-D FFT diagonalises it into one ``C x C`` matrix
:math:`\\hat K(\\omega)` per frequency, and

.. math::  y^\\star = y - \\mathcal F^{-1}\\big[ \\hat K(\\omega)^{-1} \\, \\widehat{\\nabla E(y)}(\\omega) \\big]

is the exact minimiser, in ``O(C^3 HW + C^2 HW log HW)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Solver, StepOutput, sample_norm
from .problem import Problem
from .quadratic_part import apply_spectrum, hessian_vector_product, impulse_spectrum, require_quadratic


@dataclass
class FFTState:
    """The Hessian's spectrum ``K``: per frequency a ``C x C`` block (``[B, H, W // 2 + 1, C, C]``,
    :func:`~energycrf.solvers.quadratic_part.impulse_spectrum`), which the step solves against."""

    K: Tensor

__all__ = ["FFTSolver", "FFTState"]


class FFTSolver(Solver):
    """Exact minimiser of a translation-invariant quadratic with circular boundary, by FFT.

    Raises ``ValueError`` unless ``E.is_quadratic`` and ``E.periodic``, and when a random
    probe shows the Hessian is not a circular convolution (e.g. position-dependent terms).

    Args:
        check_tol: relative tolerance of that probe (default: ``sqrt(eps)`` of the dtype).
    """

    name = "fft"
    monotone = True
    quadratic_only = True  # refuses a non-quadratic energy in check(), before any work

    def __init__(self, check_tol: float | None = None):
        if check_tol is not None and (isinstance(check_tol, bool) or not isinstance(check_tol, (int, float))
                                      or not 0 < check_tol < float("inf")):
            raise ValueError(f"check_tol: expected None or a positive finite number, got {check_tol!r}")
        self.check_tol = check_tol

    def check(self, problem: Problem, y0: Tensor) -> None:
        require_quadratic(problem, self.name)
        if not bool(getattr(problem.E, "periodic", False)):
            raise ValueError(
                "fft: the FFT diagonalisation needs a circular boundary (E.periodic is False for "
                f"{type(problem.E).__name__}; e.g. Pairwise with zero padding). Use "
                "method='conjugate_gradient' (exact for any quadratic energy)."
            )

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> FFTState:
        K = impulse_spectrum(problem, y, g)
        # the Hessian must be this convolution: test it on a random probe
        gen = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
        Hv = hessian_vector_product(problem, y, g, v)
        tol = self.check_tol if self.check_tol is not None else torch.finfo(y.dtype).eps ** 0.5
        err = sample_norm(Hv - apply_spectrum(K, v)) / sample_norm(Hv).clamp_min(torch.finfo(y.dtype).tiny)
        if bool((err > tol).any()):
            raise ValueError(
                f"fft: the energy's Hessian is not a circular convolution (relative mismatch "
                f"{float(err.max()):.2e} > {tol:.1e}): a term depends on position or the boundary "
                "is not circular. Use method='conjugate_gradient'."
            )
        return FFTState(K=K)

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: FFTState) -> StepOutput:
        H, W = y.shape[-2:]
        gh = torch.fft.rfft2(g).permute(0, 2, 3, 1).unsqueeze(-1)
        sol, info = torch.linalg.solve_ex(state.K, gh)
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
