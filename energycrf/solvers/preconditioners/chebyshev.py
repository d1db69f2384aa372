r"""The Chebyshev preconditioner: a polynomial in the quadratic part's Hessian that approximates
its inverse, from the quadratic terms' spectral bounds (:func:`chebyshev_bounds`), with its
degree (:func:`chebyshev_accuracy`), its coefficients (recurrence and monomial) and the one
operator per problem, degree and accuracy (:func:`chebyshev_preconditioner`).
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from typing import Any

import torch
from torch import Tensor

from ..hessian import HessianOperator
from ..problem import Problem
from ..quadratic_part import problem_quadratic_part, quadratic_part
from ..result import SolverWarning

__all__ = [
    "CHEBYSHEV_ACCURACY",
    "CHEBYSHEV_START_ACCURACY",
    "CHEBYSHEV_WARN_DEGREE",
    "HORNER_DEGREE",
    "ChebyshevPreconditioner",
    "check_chebyshev",
    "check_degree",
    "chebyshev_accuracy",
    "chebyshev_bounds",
    "chebyshev_preconditioner",
]


#: The accuracy a :class:`ChebyshevPreconditioner` without a given degree is built for: the
#: smallest degree ``m`` with ``1 / T_m(sigma) <= 0.02``, i.e. ``|1 - lambda p(lambda)| <= 0.02`` on
#: the quadratic part's spectrum (the degrees it gives, and the gaps they reach: docs/solvers.md).
CHEBYSHEV_ACCURACY = 0.02

#: The accuracy of the quadratic start's Chebyshev polynomial (``y0="quadratic"`` with
#: ``precondition="chebyshev"``) when no ``start_degree`` is given. Looser than the steps' accuracy:
#: the start's error is reduced again by the first step's operator, which must also carry the other
#: terms' gradient, so a lower degree (one product fewer) serves the start where the steps' degree
#: matters more (the gaps by start and step degree: docs/solvers.md, "The start's own degree").
CHEBYSHEV_START_ACCURACY = 0.1


#: Automatic degrees above this warn (a :class:`~energycrf.solvers.result.SolverWarning`): so many
#: products per application are likely slower than the FFT operator.
CHEBYSHEV_WARN_DEGREE = 32


#: Degrees ``m`` up to this apply :class:`ChebyshevPreconditioner` by Horner's rule on the
#: polynomial's monomial coefficients: ``m - 1`` products and ``m - 1`` passes, against ``5 (m - 1)``
#: passes of the recurrence. The monomial terms cancel, by a factor :math:`\lambda_- \sum_k |c_k| \lambda_+^k`
#: that grows as about :math:`2.5^m` whatever the interval (6 at ``m = 3``, 100 at ``m = 6``), and
#: float32 round-off with it; higher degrees run the recurrence.
HORNER_DEGREE = 3


def chebyshev_bounds(E_quadratic: Any, c: Tensor | None, height: int, width: int) -> tuple[float, float]:
    """``(lambda_-, lambda_+)`` of :class:`ChebyshevPreconditioner`: the quadratic part's convexity
    margin and curvature bound, or a ``ValueError`` saying why they are not a usable interval."""

    def refuse(why: str) -> ValueError:
        return ValueError(f"precondition='chebyshev': {why}; use precondition='fft' or 'blocks'")

    if E_quadratic is None:
        raise refuse("the energy has no quadratic term (Unary, Pairwise)")
    name = type(E_quadratic).__name__
    margin = E_quadratic.convexity_margin(c) if hasattr(E_quadratic, "convexity_margin") else None
    if margin is None:
        raise refuse(f"the quadratic part ({name}) gives no convexity margin (a lower bound on its Hessian's "
                     "eigenvalues: implement convexity_margin() on the term)")
    if not margin > 0:
        raise refuse(f"the quadratic part's convexity margin is {margin:.4g} <= 0, so its Hessian's spectrum has "
                     "no positive lower bound (e.g. Pairwise without a Unary term)")
    bound = E_quadratic.curvature_bound(height, width, c) if hasattr(E_quadratic, "curvature_bound") else None
    if bound is None:
        raise refuse(f"the quadratic part ({name}) gives no curvature bound (an upper bound on its Hessian's "
                     "eigenvalues: implement curvature_bound() on the term)")
    margin, bound = float(margin), float(bound)
    if not (math.isfinite(margin) and math.isfinite(bound)) or bound < margin * (1 - 1e-12):
        raise refuse(f"the quadratic part ({name}) gives convexity margin {margin:.6g} and curvature bound "
                     f"{bound:.6g}, which are not a finite interval (the bound must be at least the margin)")
    if margin / bound <= 4 * torch.finfo(torch.float64).eps:
        raise refuse(f"the quadratic part's spectral interval [{margin:.3g}, {bound:.3g}] is too ill-conditioned "
                     "for a Chebyshev polynomial (the Unary term is far weaker than the rest)")
    return margin, max(bound, margin)  # equal up to round-off at most (checked above)


class ChebyshevPreconditioner:
    r"""A polynomial in the quadratic part's Hessian that approximates its inverse: ``m - 1``
    products with ``H_q`` per application, no FFT and no boundary correction.

    Chebyshev semi-iteration on :math:`H_q z = v` from :math:`z = 0`, ``m`` steps, on the spectral
    interval :math:`[\lambda_-, \lambda_+]` with centre :math:`\theta` and half-width :math:`\delta`
    (:math:`\sigma = \theta / \delta`):

    .. math::

        z_1 = d_0 = v / \theta, \quad r_k = r_{k-1} - H_q d_{k-1}, \quad
        \rho_k = (2\sigma - \rho_{k-1})^{-1}, \quad
        d_k = \rho_k \rho_{k-1} d_{k-1} + \tfrac{2 \rho_k}{\delta} r_k, \quad z_{k+1} = z_k + d_k

    (:math:`r_0 = v`, :math:`\rho_0 = 1/\sigma`). So ``P v = z_m = p(H_q) v`` with
    :math:`1 - \lambda p(\lambda) = T_m((\theta - \lambda)/\delta) / T_m(\sigma)`, the residual
    polynomial of least maximum on the interval: :math:`|1 - \lambda p(\lambda)| \le 1 / T_m(\sigma)`
    (:attr:`accuracy`) for every eigenvalue of ``H_q``, and ``P`` is a fixed, linear, symmetric
    operator, positive definite whenever every eigenvalue of ``H_q`` is below
    :math:`\lambda_- + \lambda_+` (where the residual polynomial reaches 1): a bound need not be
    tight for L-BFGS to get a definite ``H^0``.

    The bounds are the quadratic terms' own: :math:`\lambda_-` their convexity margin
    (``E.convexity_margin``: ``2 w`` for a Unary term), :math:`\lambda_+` their curvature bound
    (``E.curvature_bound``: ``2 w`` plus, for a Pairwise term, ``2 lambda_max(M)`` times its
    kernel's Laplacian bound, the largest value of the stencil's spectrum on the image's frequency
    grid for a ``LocalKernel``). Neither costs a product with ``H_q`` or an image-sized FFT, and
    neither needs translation invariance (a site-dependent term that gives both works too). With
    :math:`\kappa = \lambda_+ / \lambda_-` the degree needed for an accuracy grows as
    :math:`\sqrt\kappa`, so this suits well-conditioned quadratic parts (a Unary term not much
    weaker than the Pairwise one); on ill-conditioned ones the FFT operator is cheaper.

    Args:
        degree: ``m >= 1`` (``1``: ``v / theta``); ``None``: the smallest ``m`` with
            :math:`1/T_m(\sigma) \le` ``target`` (default :data:`CHEBYSHEV_ACCURACY`).
        bounds: ``(lambda_-, lambda_+)`` when known, else :func:`chebyshev_bounds`.
    """

    def __init__(self, E_quadratic: Any, x: Tensor, c: Tensor | None, y: Tensor, degree: int | None = None,
                 bounds: tuple[float, float] | None = None, counts: dict | None = None,
                 target: float = CHEBYSHEV_ACCURACY):
        self.counts = {} if counts is None else counts
        self.quadratic_part = E_quadratic
        #: ``(s H_q + t I) v``, prepared once (degree, windows); a duck-typed energy without a Hessian
        #: structure: its product at ``y``
        self.hessian = HessianOperator.of_energy(E_quadratic, x.detach(), c, y)
        self.lower, self.upper = chebyshev_bounds(E_quadratic, c, *y.shape[-2:]) if bounds is None else bounds
        self._dtype = y.dtype
        self._set_degree(check_degree(degree), target)

    def _set_degree(self, degree: int | None, target: float) -> None:
        self.centre = 0.5 * (self.upper + self.lower)
        self.degree, self.accuracy, self.coefficients, self.monomial = _chebyshev_polynomial(
            self.lower, self.upper, degree, target, torch.finfo(self._dtype).eps)
        if degree is None and self.degree > CHEBYSHEV_WARN_DEGREE:
            sigma = (self.upper + self.lower) / (self.upper - self.lower)
            warnings.warn(
                f"precondition='chebyshev': the quadratic part's spectral interval (condition number "
                f"{(sigma + 1) / (sigma - 1):.3g}) needs degree {self.degree} ({self.degree - 1} products per "
                f"application) for accuracy {target}; precondition='fft' is likely cheaper (or pass degree=)",
                SolverWarning, stacklevel=4)

    def with_degree(self, degree: int | None, target: float = CHEBYSHEV_ACCURACY) -> ChebyshevPreconditioner:
        """The operator of another degree (or ``target``) on the same prepared Hessian and bounds."""
        other = copy.copy(self)
        other._set_degree(check_degree(degree), target)
        return other

    def count_products(self, n: int) -> None:
        """Count ``n`` products with the quadratic part (``counts["quadratic_hvp"]``)."""
        self.counts["quadratic_hvp"] = self.counts.get("quadratic_hvp", 0) + n

    def __call__(self, v: Tensor) -> Tensor:
        """``P v = p(H_q) v`` (``m - 1`` products with the quadratic part), a new tensor. In place
        without a graph; out of place, recorded by autograd, when ``v`` requires a gradient (the
        unrolled layers differentiate through it)."""
        graph = torch.is_grad_enabled() and v.requires_grad
        with torch.enable_grad() if graph else torch.no_grad():
            if self.monomial is not None:
                return self._horner(v, graph)
            return self._recurrence(v, graph)

    def _horner(self, v: Tensor, graph: bool) -> Tensor:
        r""":math:`p(H_q) v = c_0 v + H_q (c_1 v + H_q (c_2 v + \dots))` with the monomial
        coefficients :math:`c_k` (:data:`HORNER_DEGREE`): per product one more pass, except the
        first, whose scale and shift join the product's own pass."""
        c = self.monomial
        if len(c) == 1:
            return v * c[0]
        self.count_products(1)
        z = self.hessian(v, c[-1], c[-2])  # (c_{m-1} H_q + c_{m-2}) v in the product's own pass
        for ck in reversed(c[:-2]):
            self.count_products(1)
            z = _combine(self.hessian(z), 1.0, v, ck, in_place=not graph)
        return z

    def _recurrence(self, v: Tensor, graph: bool) -> Tensor:
        """The semi-iteration itself (any degree; its terms stay bounded where monomial
        coefficients would cancel). Without a graph ``d`` is a copy of ``z``, and ``r`` becomes
        ours after the first step (``v`` is the caller's), so all three update in place."""
        in_place = not graph
        z = v / self.centre
        d = z.clone() if in_place and self.coefficients else z
        r = v
        for k, (a, b) in enumerate(self.coefficients):
            self.count_products(1)
            r = _combine(r, 1.0, self.hessian(d), -1.0, in_place=in_place and k > 0)  # r - H_q d
            d = _combine(d, a, r, b, in_place)  # a d + b r
            z = _combine(z, 1.0, d, 1.0, in_place)  # z + d
        return z


def _combine(u: Tensor, a: float, w: Tensor, b: float, in_place: bool) -> Tensor:
    """``a u + b w`` (``a = 1``: no pass for it): into ``u`` when ``in_place`` (a tensor of ours, no
    autograd graph), else a new tensor that autograd records. The polynomial's one in-place choice."""
    if in_place:
        return (u if a == 1.0 else u.mul_(a)).add_(w, alpha=b)
    return torch.add(u if a == 1.0 else u * a, w, alpha=b)


@functools.lru_cache(maxsize=256)
def _chebyshev_polynomial(lower: float, upper: float, degree: int | None, target: float,
                          eps: float) -> tuple[int, float, tuple[tuple[float, float], ...], tuple[float, ...] | None]:
    """``(degree, accuracy, recurrence coefficients, monomial coefficients or None)`` of
    :class:`ChebyshevPreconditioner` on ``[lower, upper]`` (a pure function of these numbers,
    memoised): ``a_k = rho_k rho_{k-1}`` and ``b_k = 2 rho_k / delta`` for ``k = 1 .. m - 1``."""
    theta, delta = 0.5 * (upper + lower), 0.5 * (upper - lower)
    if delta <= 4 * eps * theta:  # H_q = theta I (to round-off): exact in one step
        return 1, 0.0, (), (1.0 / theta,)
    sigma = theta / delta
    m = _chebyshev_degree(sigma, degree, target)
    coefficients = []
    rho = 1.0 / sigma
    for _ in range(m - 1):
        rho_next = 1.0 / (2.0 * sigma - rho)
        coefficients.append((rho_next * rho, 2.0 * rho_next / delta))
        rho = rho_next
    monomial = _monomial(theta, coefficients) if m <= HORNER_DEGREE else None
    return m, chebyshev_accuracy(sigma, m), tuple(coefficients), monomial


def _monomial(theta: float, coefficients: list[tuple[float, float]]) -> tuple[float, ...]:
    """The coefficients ``c_0 .. c_{m-1}`` of ``p(lambda) = sum_k c_k lambda^k``: the recurrence of
    :class:`ChebyshevPreconditioner` run on polynomials in ``lambda`` (coefficient lists, float64)."""
    m = len(coefficients) + 1
    z, d, r = [1.0 / theta] + [0.0] * (m - 1), [1.0 / theta] + [0.0] * (m - 1), [1.0] + [0.0] * (m - 1)
    for a, b in coefficients:
        r = [r[0]] + [r[k] - d[k - 1] for k in range(1, m)]  # r - lambda d
        d = [a * dk + b * rk for dk, rk in zip(d, r)]
        z = [zk + dk for zk, dk in zip(z, d)]
    return tuple(z)


def check_chebyshev(problem: Problem) -> None:
    """A ``ValueError`` naming the alternatives when ``problem``'s quadratic part has no Chebyshev
    bounds (a solver's check, before any work)."""
    # nothing kept for the solve (validation runs before its timed region, which makes its own)
    chebyshev_bounds(quadratic_part(problem.E, keep=False), problem.c, *problem.x.shape[-2:])


def check_degree(degree: Any, name: str = "degree") -> int | None:
    """``degree`` (of the Chebyshev preconditioner) as an int ``>= 1`` or ``None``, or a ``ValueError``."""
    if degree is None:
        return None
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"{name}: expected None (automatic) or an int >= 1, got {degree!r}")
    return degree


def chebyshev_accuracy(sigma: float, degree: int) -> float:
    """``1 / T_m(sigma)`` for ``sigma > 1``, as ``2 e / (1 + e^2)`` with ``e = exp(-m acosh sigma)``
    (no overflow for large degrees)."""
    e = math.exp(-degree * math.acosh(sigma))
    return 2 * e / (1 + e * e)


def _chebyshev_degree(sigma: float, degree: int | None, target: float = CHEBYSHEV_ACCURACY) -> int:
    """The given degree, or the smallest ``m`` with ``1 / T_m(sigma) <= target``."""
    if degree is not None:
        return degree
    return max(1, math.ceil(math.acosh(1.0 / target) / math.acosh(sigma) - 1e-9))


def chebyshev_preconditioner(problem: Problem, y: Tensor, degree: int | None = None,
                             target: float = CHEBYSHEV_ACCURACY) -> ChebyshevPreconditioner:
    """The :class:`ChebyshevPreconditioner` of ``problem``'s quadratic part, built once per problem,
    degree and target (the quadratic start and the solver share it, or its prepared Hessian and
    bounds when their degrees differ)."""
    kept = problem.prepare("chebyshev", dict)  # by (degree, target)
    key = (degree, target)
    if key not in kept:
        if kept:
            kept[key] = next(iter(kept.values())).with_degree(degree, target)
        else:
            Eq = problem_quadratic_part(problem)
            bounds = chebyshev_bounds(Eq, problem.c, *y.shape[-2:])
            kept[key] = ChebyshevPreconditioner(Eq, problem.x, problem.c, y, degree, bounds=bounds,
                                                counts=problem.counts, target=target)
    return kept[key]
