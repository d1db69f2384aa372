"""The quadratic part of an energy and products with a quadratic energy's Hessian.

A quadratic energy has a constant Hessian ``H`` and ``grad E(y) = H y - b``, so
``H v = grad E(y + v) - grad E(y)`` exactly (:func:`hessian_vector_product`); its impulse
responses give ``H`` as a convolution and their FFT its spectrum (:func:`impulse_spectrum`).
The quadratic part :math:`E_q` of a sum (its Unary and Pairwise terms, :func:`quadratic_part`)
is what the quadratic start minimises and what the FFT and Chebyshev preconditioners invert.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from ..energies.composite import SumEnergy
from .linalg import sample_norm
from .problem import Problem

__all__ = [
    "apply_spectrum",
    "hessian_vector_product",
    "impulse_spectrum",
    "impulse_taps",
    "problem_quadratic_part",
    "quadratic_part",
    "require_quadratic",
]

_NOT_QUADRATIC = (
    "{name} minimises purely quadratic energies only (Unary, Pairwise and their sums; "
    "E.is_quadratic is False for {kind}). Use method='coordinate_descent', 'mean_field', "
    "'lbfgs' or 'gradient_descent'."
)


def require_quadratic(problem: Problem, name: str) -> None:
    """A ``ValueError`` naming the other methods when the energy of method ``name`` is not quadratic."""
    if not problem.is_quadratic:
        raise ValueError(_NOT_QUADRATIC.format(name=name, kind=type(problem.E).__name__))


def hessian_vector_product(problem: Problem, y: Tensor, g: Tensor, v: Tensor) -> Tensor:
    """``H v`` of a quadratic energy from two gradients: ``(grad(y + s v) - grad(y)) / s``.

    ``s`` (per sample) makes ``s v`` as large as ``y`` so the difference is not lost to
    round-off; exact up to rounding because ``grad`` is affine.
    """
    vn = sample_norm(v).clamp_min(torch.finfo(v.dtype).tiny)
    s = (1.0 + sample_norm(y)) / vn
    s4 = s.view(-1, 1, 1, 1)
    return (problem.grad(y + s4 * v) - g) / s4


#: The sum of an energy's quadratic terms by energy, kept for later solves (weakly: it goes with
#: the energy, and nothing of it is stored on the energy, so a copy or a saved model carries none).
_KEPT_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def quadratic_part(E: Any, keep: bool = True) -> Any | None:
    """The quadratic terms of ``E`` as one energy (``E`` itself when it is quadratic), or ``None``.

    A sum of several is a new module, kept for ``E`` (unless ``keep=False``) for as long as these
    are its quadratic terms, so that later solves do not build it again: it holds the terms
    themselves (no copy of a value), so it stays valid when their parameters change."""
    if bool(getattr(E, "is_quadratic", False)):
        return E
    terms = [t for t in getattr(E, "terms", []) if bool(getattr(t, "is_quadratic", False))]
    if len(terms) <= 1:
        return terms[0] if terms else None
    kept = _kept_part(E)
    if kept is not None and len(kept.terms) == len(terms) and all(a is b for a, b in zip(kept.terms, terms)):
        return kept
    part = SumEnergy(terms)
    if keep:
        try:
            _KEPT_PARTS[E] = part
        except TypeError:  # an energy that cannot be weakly referenced: made again next time
            pass
    return part


def _kept_part(E: Any) -> Any | None:
    try:
        return _KEPT_PARTS.get(E)
    except TypeError:
        return None


def problem_quadratic_part(problem: Problem) -> Any | None:
    """:func:`quadratic_part` of ``problem.E``, made once per problem (``problem.prepared["quadratic_part"]``)."""
    return problem.prepare("quadratic_part", lambda: quadratic_part(problem.E))


def impulse_spectrum(problem: Problem, y: Tensor, g: Tensor, centre: bool = False) -> Tensor:
    """The 2-D real FFT of the Hessian's impulse responses, ``[B, H, W//2+1, C, C]`` (out, in).

    With ``centre=False`` the impulse sits at site ``(0, 0)`` (exact for a circular,
    translation-invariant Hessian); with ``centre=True`` at the centre of the image and the
    response is rolled back to the origin: the circulant approximation of an operator whose
    boundary is not circular (exact in the interior), used as a preconditioner.
    """
    return torch.fft.rfft2(impulse_taps(problem, y, g, centre)).permute(0, 3, 4, 1, 2)


def impulse_taps(problem: Problem, y: Tensor, g: Tensor, centre: bool) -> Tensor:
    """The Hessian's responses to an impulse in each channel at ``(0, 0)`` or, with ``centre``,
    at the image centre rolled back to the origin: ``[B, C, C, H, W]`` (out, in)."""
    B, C, H, W = y.shape
    h0, w0 = (H // 2, W // 2) if centre else (0, 0)
    taps = torch.empty(B, C, C, H, W, dtype=y.dtype, device=y.device)
    for ci in range(C):
        v = torch.zeros_like(y)
        v[:, ci, h0, w0] = 1.0
        taps[:, :, ci] = hessian_vector_product(problem, y, g, v)
    return torch.roll(taps, shifts=(-h0, -w0), dims=(-2, -1)) if centre else taps


def apply_spectrum(K: Tensor, v: Tensor) -> Tensor:
    """``F^{-1}[K(w) F[v](w)]`` for per-frequency ``C x C`` matrices ``K`` (``[B or 1, H, W', C, C]``)."""
    H, W = v.shape[-2:]
    out = torch.einsum("bhwij,bjhw->bihw", K, torch.fft.rfft2(v))  # an einsum: cheaper than a batched matmul here
    return torch.fft.irfft2(out, s=(H, W))
