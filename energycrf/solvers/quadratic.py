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

__all__ = [
    "ConjugateGradient",
    "FFTSolver",
    "hessian_vector_product",
    "impulse_spectrum",
    "quadratic_part",
    "SpectralPreconditioner",
    "make_preconditioner",
]

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


def quadratic_part(E: Any) -> Any | None:
    """The quadratic terms of ``E`` as one energy (``E`` itself when it is quadratic), or ``None``."""
    if bool(getattr(E, "is_quadratic", False)):
        return E
    terms = [t for t in getattr(E, "terms", []) if bool(getattr(t, "is_quadratic", False))]
    if not terms:
        return None
    from ..energies import SumEnergy

    return terms[0] if len(terms) == 1 else SumEnergy(terms)


def impulse_spectrum(problem: Problem, y: Tensor, g: Tensor, centre: bool = False) -> Tensor:
    """The 2-D real FFT of the Hessian's impulse responses, ``[B, H, W//2+1, C, C]`` (out, in).

    With ``centre=False`` the impulse sits at site ``(0, 0)`` (exact for a circular,
    translation-invariant Hessian); with ``centre=True`` at the centre of the image and the
    response is rolled back to the origin: the circulant approximation of an operator whose
    boundary is not circular (exact in the interior), used as a preconditioner.
    """
    B, C, H, W = y.shape
    h0, w0 = (H // 2, W // 2) if centre else (0, 0)
    taps = torch.empty(B, C, C, H, W, dtype=y.dtype, device=y.device)  # [b, out, in, h, w]
    for ci in range(C):
        v = torch.zeros_like(y)
        v[:, ci, h0, w0] = 1.0
        taps[:, :, ci] = hessian_vector_product(problem, y, g, v)
    if centre:
        taps = torch.roll(taps, shifts=(-h0, -w0), dims=(-2, -1))
    return torch.fft.rfft2(taps).permute(0, 3, 4, 1, 2)


def _apply_spectrum(K: Tensor, v: Tensor) -> Tensor:
    """``F^{-1}[K(w) F[v](w)]`` for per-frequency ``C x C`` matrices ``K``."""
    H, W = v.shape[-2:]
    vh = torch.fft.rfft2(v).permute(0, 2, 3, 1).unsqueeze(-1)  # [B, H, W', C, 1]
    out = (K @ vh).squeeze(-1).permute(0, 3, 1, 2)
    return torch.fft.irfft2(out, s=(H, W))


class SpectralPreconditioner:
    """Applies the inverse of the circulant approximation of an energy's quadratic part.

    ``P v = F^{-1}[\\hat K(\\omega)^{-1} \\hat v(\\omega)]`` with ``\\hat K`` from
    :func:`impulse_spectrum` (``centre=True``) of the quadratic terms (Unary + Pairwise).
    Exact inverse Hessian for a circular quadratic energy; for zero padding or extra
    non-quadratic terms a preconditioner that removes the pairwise term's conditioning.
    """

    def __init__(self, E_quadratic: Any, x: Tensor, c: Tensor | None, y: Tensor):
        prob = Problem(E_quadratic, x, c)
        K = impulse_spectrum(prob, y, prob.grad(y), centre=True)
        K = 0.5 * (K + K.conj().transpose(-1, -2))
        self.Kinv = torch.linalg.inv(K)
        self.evaluations = prob.counts["grad"]

    def __call__(self, v: Tensor) -> Tensor:
        return _apply_spectrum(self.Kinv, v)


class BlockPreconditioner:
    """Applies the inverse curvature blocks, ``(P v)_i = A_i^{-1} v_i`` (the mean-field step)."""

    def __init__(self, problem: Problem, y: Tensor):
        self.L = torch.linalg.cholesky(_positive_definite_blocks(problem.curvature(y)))

    def __call__(self, v: Tensor) -> Tensor:
        rhs = v.permute(0, 2, 3, 1).unsqueeze(-1)
        return torch.cholesky_solve(rhs, self.L).squeeze(-1).permute(0, 3, 1, 2)


_PRECONDITIONERS = ("blocks", "fft", "none")


def make_preconditioner(kind: str | bool, problem: Problem, y: Tensor):
    """``"blocks"`` (or True), ``"fft"`` or ``"none"`` (or False) -> a callable or ``None``.

    ``"fft"`` falls back to ``"blocks"`` when the energy has no quadratic term.
    """
    kind = {True: "blocks", False: "none"}.get(kind, kind)
    if kind not in _PRECONDITIONERS:
        raise ValueError(f"precondition: expected one of {_PRECONDITIONERS} (or a bool), got {kind!r}")
    if kind == "none":
        return None
    if kind == "fft":
        Eq = quadratic_part(problem.E)
        if Eq is not None:
            P = SpectralPreconditioner(Eq, problem.x, problem.c, y)
            problem.counts["grad"] += P.evaluations
            return P
    return BlockPreconditioner(problem, y)


def _require_quadratic(problem: Problem, name: str) -> None:
    if not problem.is_quadratic:
        raise ValueError(_NOT_QUADRATIC.format(name=name, kind=type(problem.E).__name__))


class ConjugateGradient(Solver):
    """Matrix-free preconditioned conjugate gradients for quadratic energies.

    Args:
        precondition: ``"blocks"`` (inverse curvature blocks, the default; ``True`` too),
            ``"fft"`` (inverse circulant approximation: exact for circular boundaries, so
            CG then ends in one step) or ``"none"`` (``False``).
    """

    name = "conjugate_gradient"
    monotone = True

    def __init__(self, precondition: str | bool = "blocks"):
        if {True: "blocks", False: "none"}.get(precondition, precondition) not in _PRECONDITIONERS:
            raise ValueError(f"precondition: expected one of {_PRECONDITIONERS} (or a bool), got {precondition!r}")
        self.precondition = precondition

    def check(self, problem: Problem, y0: Tensor) -> None:
        _require_quadratic(problem, self.name)

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> Any:
        P = make_preconditioner(self.precondition, problem, y) or (lambda r: r)
        z = P(-g)
        return {"P": P, "p": z, "rz": sample_dot(-g, z)}

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
        z = state["P"](-g_new)
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
        K = impulse_spectrum(problem, y, g)
        # the Hessian must be this convolution: test it on a random probe
        gen = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
        Hv = hessian_vector_product(problem, y, g, v)
        tol = self.check_tol if self.check_tol is not None else torch.finfo(y.dtype).eps ** 0.5
        err = sample_norm(Hv - _apply_spectrum(K, v)) / sample_norm(Hv).clamp_min(torch.finfo(y.dtype).tiny)
        if bool((err > tol).any()):
            raise ValueError(
                f"fft: the energy's Hessian is not a circular convolution (relative mismatch "
                f"{float(err.max()):.2e} > {tol:.1e}): a term depends on position or the boundary "
                "is not circular. Use method='conjugate_gradient'."
            )
        return {"K": K}

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
