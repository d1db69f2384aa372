r"""The quadratic start, ``y0="quadratic"``: the minimiser of the energy's quadratic part.

.. math::  y^{(0)} = x - P \, \nabla E_q(x), \qquad E_q = \text{the quadratic terms (Unary + Pairwise)},

with ``P`` the FFT operator of the quadratic part (:class:`SpectralPreconditioner`, with
:data:`QUADRATIC_START_REFINE` Richardson steps) or a solver's own Chebyshev polynomial, whose
prepared Hessian also gives :math:`\nabla E_q(x)` as one product (:func:`gradient_at_data`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..energies.hessian import HessianStructure
from .hessian import HessianOperator
from .preconditioners.chebyshev import ChebyshevPreconditioner
from .preconditioners.spectral import SpectralPreconditioner, spectral_preconditioner
from .problem import Problem

__all__ = ["QUADRATIC_START_REFINE", "gradient_at_data", "quadratic_start", "quadratic_start_operator"]

#: Richardson steps of the quadratic start (each one FFT pair and a product with the quadratic
#: part, on the border frame when it applies). The start need not be positive definite, so it is
#: used as given for every quadratic part.
QUADRATIC_START_REFINE = 1


def quadratic_start_operator(problem: Problem) -> SpectralPreconditioner:
    """The FFT operator the quadratic start applies (built once per problem), or a ``ValueError``
    saying why the energy has no quadratic-part minimiser to start from."""
    P = spectral_preconditioner(problem, problem.x)
    if P is None:
        raise ValueError(
            f"y0='quadratic': the energy ({type(problem.E).__name__}) has no quadratic term (Unary, Pairwise); "
            "pass a tensor or None (start at x)"
        )
    if not P.positive_definite:
        raise ValueError(
            "y0='quadratic': the quadratic part of the energy is not positive definite (its circulant "
            "spectrum has a non-positive value, e.g. Pairwise without a Unary term), so it has no unique "
            "minimiser; pass a tensor or None (start at x)"
        )
    return P


def quadratic_start(problem: Problem, operator: ChebyshevPreconditioner | None = None) -> Tensor:
    """``y0 = "quadratic"``: the minimiser of the energy's quadratic part (Unary + Pairwise),

    .. math::  y^{(0)} = x - P \\, \\nabla E_q(x), \\qquad E_q = \\text{the quadratic terms},

    with ``P`` the inverse circulant of :class:`SpectralPreconditioner` and
    :data:`QUADRATIC_START_REFINE` Richardson steps for the zero boundary (exact when the
    quadratic part is circular), or the given ``operator`` (the
    :class:`ChebyshevPreconditioner` of a solver that uses it, so that no FFT spectrum is built;
    the gradient is then one product of its prepared operator, :func:`gradient_at_data`).
    Starting the Richardson iteration from ``x`` leaves a boundary error of the size of the
    noise, not of the image (as ``P b`` from zero would). The other terms are a perturbation of
    this denoised start, so their gradient there is close to the one at the minimum, and the
    next step lands much closer (docs/solvers.md, "The quadratic start"). Costs one gradient of
    the quadratic terms, the Richardson steps, and the spectrum's set-up (which L-BFGS with
    ``precondition="fft"`` then reuses); no evaluation of the other terms.
    """
    P = quadratic_start_operator(problem) if operator is None else operator
    x = problem.x.detach()
    with torch.no_grad():
        P.count_products(1)
        if operator is None:
            return torch.sub(x, P(P.quadratic_part.grad(x, x, problem.c), refine=QUADRATIC_START_REFINE))
        return torch.sub(x, P(gradient_at_data(P.quadratic_part, P.hessian, x, problem.c)))


def gradient_at_data(E_quadratic: Any, hessian: HessianOperator, x: Tensor, c: Tensor | None) -> Tensor:
    r"""The quadratic part's gradient at the data, :math:`\nabla E_q(x)`, by its prepared Hessian
    operator ``hessian`` when its terms declare where their gradients are Hessian products from
    (``quadratic_anchor``): the terms anchored at the data (Unary: :math:`2 w (y - x)`) have none
    there, those anchored at zero (Pairwise) have :math:`H_t x`, so

    .. math::  \nabla E_q(x) = \sum_{t:\,\text{zero}} H_t \, x,

    one pass of the zero-anchored terms' own Hessian structures (a sum's :attr:`HessianOperator.parts`).
    Otherwise (a term without an anchor, or a duck-typed quadratic part without Hessian
    structures) ``E_quadratic.grad(x, x, c)``."""
    terms = list(getattr(E_quadratic, "terms", [E_quadratic]))
    anchors = [getattr(t, "quadratic_anchor", None) for t in terms]
    parts = hessian.parts if len(terms) > 1 else (hessian.structure,)
    if (not hasattr(E_quadratic, "_hessian_structure") or parts is None or len(parts) != len(terms)
            or not all(a in ("zero", "data") for a in anchors)):
        return E_quadratic.grad(x, x, c)
    at_zero = [part for part, a in zip(parts, anchors) if a == "zero"]
    if not at_zero:
        return torch.zeros_like(x)
    return HessianOperator(at_zero[0] if len(at_zero) == 1 else HessianStructure.sum(at_zero))(x)
