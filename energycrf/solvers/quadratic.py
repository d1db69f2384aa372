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

import copy
import functools
import math
import warnings
from typing import Any

import torch
from torch import Tensor

from ..energies.base import HessianOperator
from ..energies.operators import window_spectrum
from .base import Problem, Solver, StepOutput, _positive_definite_blocks, sample_dot, sample_norm
from .result import SolverWarning

__all__ = [
    "ChebyshevPreconditioner",
    "ConjugateGradient",
    "FFTSolver",
    "hessian_vector_product",
    "impulse_spectrum",
    "quadratic_part",
    "SpectralPreconditioner",
    "chebyshev_bounds",
    "chebyshev_preconditioner",
    "make_preconditioner",
    "quadratic_start",
    "quadratic_start_operator",
    "CHEBYSHEV_ACCURACY",
    "CHEBYSHEV_START_ACCURACY",
    "spectral_preconditioner",
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


def quadratic_part(E: Any, keep: bool = True) -> Any | None:
    """The quadratic terms of ``E`` as one energy (``E`` itself when it is quadratic), or ``None``.

    A sum of several is a new module (about 15 µs), kept on ``E`` (unless ``keep=False``) for as
    long as these are its quadratic terms: it holds the terms themselves (no copy of a value), so
    it stays valid when their parameters change, and a deep copy of ``E`` copies it along with them."""
    if bool(getattr(E, "is_quadratic", False)):
        return E
    terms = [t for t in getattr(E, "terms", []) if bool(getattr(t, "is_quadratic", False))]
    if len(terms) <= 1:
        return terms[0] if terms else None
    kept = getattr(E, "__dict__", {}).get("_quadratic_part")
    if kept is not None and len(kept.terms) == len(terms) and all(a is b for a, b in zip(kept.terms, terms)):
        return kept
    from ..energies import SumEnergy

    part = SumEnergy(terms)
    if keep and hasattr(E, "__dict__"):
        E.__dict__["_quadratic_part"] = part  # a plain attribute: not a submodule, not in the state dict
    return part


def problem_quadratic_part(problem: Problem) -> Any | None:
    """:func:`quadratic_part` of ``problem.E``, made once per problem (a sum is a new module)."""
    if problem._quadratic == ():
        problem._quadratic = quadratic_part(problem.E)
    return problem._quadratic


def impulse_spectrum(problem: Problem, y: Tensor, g: Tensor, centre: bool = False) -> Tensor:
    """The 2-D real FFT of the Hessian's impulse responses, ``[B, H, W//2+1, C, C]`` (out, in).

    With ``centre=False`` the impulse sits at site ``(0, 0)`` (exact for a circular,
    translation-invariant Hessian); with ``centre=True`` at the centre of the image and the
    response is rolled back to the origin: the circulant approximation of an operator whose
    boundary is not circular (exact in the interior), used as a preconditioner.
    """
    return torch.fft.rfft2(_impulse_taps(problem, y, g, centre)).permute(0, 3, 4, 1, 2)


def _impulse_taps(problem: Problem, y: Tensor, g: Tensor, centre: bool) -> Tensor:
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


def _apply_spectrum(K: Tensor, v: Tensor) -> Tensor:
    """``F^{-1}[K(w) F[v](w)]`` for per-frequency ``C x C`` matrices ``K`` (``[B or 1, H, W', C, C]``)."""
    H, W = v.shape[-2:]
    out = torch.einsum("bhwij,bjhw->bihw", K, torch.fft.rfft2(v))  # half the time of a batched matmul
    return torch.fft.irfft2(out, s=(H, W))


def _circulant_taps(E_quadratic: Any, x: Tensor, c: Tensor | None, y: Tensor) -> tuple[Tensor, int, bool]:
    """The Hessian's impulse responses at an interior site, ``[B', C, C, H, W]`` (out, in)
    rolled to the origin (``B' = 1`` when every sample has the same), and the number of
    gradient evaluations spent, and whether the taps are a ``(2R + 1)^2`` crop centred at
    ``(R, R)`` (their spectrum on the grid: :func:`window_spectrum`).

    When the quadratic part is translation invariant (``E.translation_invariant``: the same
    stencil at every interior site, whatever ``x``) and every term declares a finite interaction
    radius ``R`` with ``2R + 1 <= H, W``, the responses are taken on a ``(2R + 1)^2`` crop (its
    centre sees every neighbour a site of the image interior sees, so the taps are the same),
    all ``C`` impulses at once in a batch of ``B C`` crops: two gradients of tiny images
    instead of ``C + 1`` of the full one. Otherwise (a term whose Hessian depends on the site
    or on ``x``) the impulse sits at the centre of the full image.
    """
    B, C, H, W = y.shape
    declares = getattr(E_quadratic, "_declares_radius", lambda: False)()
    invariant = bool(getattr(E_quadratic, "translation_invariant", False))
    R = E_quadratic.interaction_radius if (declares and invariant) else None
    if R is None or 2 * R + 1 > min(H, W):
        prob = Problem(E_quadratic, x, c)
        taps = _impulse_taps(prob, y, prob.grad(y), centre=True)
        if B > 1 and bool((taps == taps[:1]).all()):
            taps = taps[:1]
        return taps, prob.counts["grad"], False
    s = 2 * R + 1
    # crops repeated C times (impulse in channel ci for copy ci): [C * B, C, s, s]
    rep = lambda t: t.repeat(C, *([1] * (t.dim() - 1)))  # noqa: E731
    yc, xc = rep(y[..., :s, :s]), rep(x[..., :s, :s])
    cc = None if c is None else rep(c)
    v = torch.zeros_like(yc).view(C, B, C, s, s)
    v[torch.arange(C), :, torch.arange(C), R, R] = 1.0
    with torch.no_grad():
        E_quadratic.validate(yc, xc, cc)
        small = E_quadratic._hessian_vector_product(yc, xc, cc, v.view_as(yc))  # [(ci, b), out, s, s]
    small = small.detach().view(C, B, C, s, s).permute(1, 2, 0, 3, 4)  # [b, out, in, s, s]
    if B > 1 and bool((small == small[:1]).all()):
        small = small[:1]
    return small, 1, True


def _place_taps(small: Tensor, H: int, W: int) -> Tensor:
    """``[..., s, s]`` taps centred at ``(R, R)`` -> ``[..., H, W]`` with the centre at the origin."""
    s = small.shape[-1]
    R = s // 2
    rows = (torch.arange(s, device=small.device) - R) % H
    cols = (torch.arange(s, device=small.device) - R) % W
    taps = small.new_zeros(*small.shape[:-2], H, W)
    taps[..., rows[:, None], cols[None, :]] = small
    return taps


def check_refine(refine: Any) -> int:
    """``refine`` (Richardson steps of the FFT operator) as an int, or a ``ValueError``."""
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine: expected an int >= 0, got {refine!r}")
    return refine


def _floored_inverse(K: Tensor) -> tuple[bool, Tensor]:
    """For Hermitian ``[..., C, C]`` blocks: whether every eigenvalue is above :func:`_floor`, and
    the inverse with the eigenvalues raised to it.

    A Cholesky factorisation of ``K - f I``, with ``f`` the floor of the Frobenius norms (which
    bound the eigenvalues), proves every eigenvalue above the floor: then the plain inverse
    (several times cheaper than an eigendecomposition of thousands of small blocks). Otherwise the
    eigendecomposition clamps them."""
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    frobenius = torch.view_as_real(K).square().sum((-3, -2, -1)).amax().sqrt()  # (matrix_norm: 40x slower)
    bound = 100 * torch.finfo(K.real.dtype).eps * frobenius
    _, info = torch.linalg.cholesky_ex(K - bound * eye)
    if not bool(info.any()):
        return True, torch.linalg.inv(K)
    return _eigh_floored_inverse(K)


def _eigh_floored_inverse(K: Tensor) -> tuple[bool, Tensor]:
    """:func:`_floored_inverse` by an eigendecomposition of every block: ``V diag(1 / max(lam, floor)) V^H``."""
    lam, V = torch.linalg.eigh(K)
    floor = _floor(lam)
    return bool(lam.amin() > floor), (V / lam.clamp_min(floor).unsqueeze(-2).to(V.dtype)) @ V.conj().transpose(-1, -2)


def _floor(spectrum: Tensor) -> Tensor:
    """``100 eps max|spectrum|``: values at or below it are round-off of a zero (a Pairwise
    term alone has a zero at DC, which float32 leaves at about ``eps`` times the largest)."""
    return 100 * torch.finfo(spectrum.dtype).eps * spectrum.abs().amax()


class SpectralPreconditioner:
    """Applies the inverse of the circulant approximation of an energy's quadratic part.

    ``P0 v = F^{-1}[\\hat K(\\omega)^{-1} \\hat v(\\omega)]`` with ``\\hat K`` the spectrum of the
    quadratic terms' (Unary + Pairwise) impulse response at an interior site. Exact inverse
    Hessian for a circular quadratic energy; for zero padding it misses the boundary (the
    border sites' smaller degree and the wrap-around couplings it adds), which costs
    quasi-Newton methods an iteration or more.

    ``refine = k > 0`` corrects the boundary with ``k`` Richardson steps on the exact quadratic
    part ``H_q`` (one Hessian-vector product of the quadratic terms, ``E._hessian_vector_product``,
    and one FFT pair each):
    ``z_0 = P0 r``, ``z_{j+1} = z_j + P0 (r - H_q z_j)``, i.e. ``P = sum_{i<=k} (I - P0 H_q)^i P0``,
    a fixed, linear and symmetric operator. With ``mu`` the eigenvalues of ``P0 H_q``, ``P H_q``
    has eigenvalues ``1 - (1 - mu)^(k+1)``: positive for every ``mu > 0`` when ``k`` is even, but
    for odd ``k`` only when ``mu < 2``. For a translation-invariant Unary + Pairwise (a
    ``LocalKernel``), ``H_q <= hat K`` (the difference is the wrap-around edges' graph
    Laplacian), so ``mu`` lies in ``(0, 1]`` and ``P`` is positive definite for every ``k``. For a
    quadratic part that is not translation invariant (a ``DenseKernel``, a user term) no such
    bound is known, and ``mu > 2`` happens: an odd ``refine`` is lowered by one there
    (:attr:`refine` is the count used), which keeps ``P`` positive definite, as L-BFGS needs.

    When the quadratic part is translation invariant (``E.translation_invariant``: its
    Hessian is the circulant's stencil at every site farther than ``R`` from the border), the
    residual ``r - H_q z`` vanishes in the interior (there ``H_q z = \\hat K z = r``, since
    every correction ``P0 (.)`` is applied to a vector supported on the border frame), so it
    is computed on the four border strips only: ``H_q`` on crops of ``2R`` rows (columns),
    exact for the ``R`` outer rows (columns). ``frame=None`` uses it when the strips hold at
    most an eighth of the sites (for a ``512 x 512`` image and ``R = 2``, 8,192 of 262,144;
    on small images the fixed cost of two more calls outweighs the saving), ``True`` always
    (a ``ValueError`` says why when it cannot apply), ``False`` never.

    When all samples have the same taps (no condition-dependent term) the spectrum is
    computed once; when channels do not mix (identity compatibility) it is a per-channel
    division instead of a ``C x C`` solve per frequency.

    A quadratic part without a unique minimiser (a Pairwise term alone: constants cost
    nothing) has zeros in its spectrum; they are raised to ``100 eps`` times its largest value,
    so ``P`` stays finite and positive definite, and ``positive_definite`` is False: the
    quadratic start refuses such an energy and L-BFGS uses the block preconditioner instead.
    """

    def __init__(self, E_quadratic: Any, x: Tensor, c: Tensor | None, y: Tensor, refine: int = 0,
                 counts: dict | None = None, frame: bool | None = None):
        # products with the quadratic part (set-up and refinement) go to counts["quadratic_hvp"]
        self.counts = {} if counts is None else counts
        taps, spent, crop = _circulant_taps(E_quadratic, x, c, y)
        self._count(spent)
        H, W = y.shape[-2:]
        radius = taps.shape[-1] // 2 if crop else None  # the crop path: a declared radius, 2R + 1 <= H, W
        C = taps.shape[1]
        diag = taps.diagonal(dim1=1, dim2=2).movedim(-1, 1)  # [B', C, h, w]
        self.diagonal = bool(torch.count_nonzero(taps) == torch.count_nonzero(diag))  # channels do not mix
        if self.diagonal:
            # point-symmetric real taps: a real spectrum (the symmetric part of the DFT); contiguous,
            # since reductions over the strided real view are ~70x slower on the CPU
            spectrum = (window_spectrum(diag, H, W, real=True) if crop
                        else torch.fft.rfft2(diag).real.contiguous())  # [B', C, H, W']
            floor = _floor(spectrum)
            self.positive_definite = bool(spectrum.amin() > floor)
            self.kinv = spectrum.clamp_min_(floor).reciprocal_()  # in place: one image-sized buffer
        else:
            K = (window_spectrum(taps, H, W) if crop else torch.fft.rfft2(taps)).permute(0, 3, 4, 1, 2)
            self.positive_definite, self.Kinv = _floored_inverse(0.5 * (K + K.conj().transpose(-1, -2)))
        # H_q <= hat K is known for translation-invariant parts: any Richardson count keeps P definite
        self._bounded_by_circulant = bool(getattr(E_quadratic, "translation_invariant", False))
        self.refine = self._definite(check_refine(refine))
        self._E, self._x, self._c, self._y = E_quadratic, x, c, y
        self.frame = self._frame_radius(E_quadratic, radius, H, W, frame)
        if self.frame is not None:
            R2 = 2 * self.frame
            both = lambda first, last: torch.cat([first, last])  # noqa: E731  (batch: first strip, then last)
            self._rows = (both(y[..., :R2, :], y[..., -R2:, :]), both(x[..., :R2, :], x[..., -R2:, :]))
            self._cols = (both(y[..., :R2], y[..., -R2:]), both(x[..., :R2], x[..., -R2:]))
            self._c2 = None if c is None else torch.cat([c, c])

    @staticmethod
    def _frame_radius(E_quadratic: Any, R: int | None, H: int, W: int, frame: bool | None) -> int | None:
        """``R`` when the residual is taken on the border frame, else ``None``."""
        if frame not in (None, True, False):
            raise ValueError(f"frame: expected None (automatic), True or False, got {frame!r}")
        why = None
        if R is None or R < 1:
            why = (f"the quadratic part declares no finite interaction radius >= 1 with 2R + 1 <= H, W "
                   f"(image {H} x {W})")
        elif not bool(getattr(E_quadratic, "translation_invariant", False)):
            why = "the quadratic part is not translation_invariant"
        elif bool(getattr(E_quadratic, "periodic", False)):
            why = "the quadratic part wraps around (periodic): its residual is zero, no frame needed"
        if frame is True and why is not None:
            raise ValueError(f"frame=True: {why}")
        if frame is False or why is not None:
            return None
        # automatic: worth it when the strips (4R (H + W) sites) hold at most an eighth of the image
        return R if (frame or 32 * R * (H + W) <= H * W) else None

    def _count(self, n: int) -> None:
        self.counts["quadratic_hvp"] = self.counts.get("quadratic_hvp", 0) + n

    def apply_circulant(self, v: Tensor) -> Tensor:
        if self.diagonal:
            H, W = v.shape[-2:]
            return torch.fft.irfft2(torch.fft.rfft2(v).mul_(self.kinv), s=(H, W))
        return _apply_spectrum(self.Kinv, v)

    def _residual(self, v: Tensor, z: Tensor) -> Tensor:
        """``v - H_q z`` for the Richardson iterates ``z`` of ``v`` (``P0 v`` plus ``P0`` of
        frame-supported vectors): with a frame, only there, since it vanishes inside."""
        self._count(1)
        with torch.no_grad():
            if self.frame is None:
                return v - self._E._hessian_vector_product(self._y, self._x, self._c, z)  # exact: H_q is constant
            R, R2, B = self.frame, 2 * self.frame, z.shape[0]
            hv = self._E._hessian_vector_product
            rows = hv(*self._rows, self._c2, torch.cat([z[..., :R2, :], z[..., -R2:, :]]))
            cols = hv(*self._cols, self._c2, torch.cat([z[..., :R2], z[..., -R2:]]))
            res = torch.zeros_like(v)
            res[..., :R, :] = v[..., :R, :] - rows[:B, ..., :R, :]
            res[..., -R:, :] = v[..., -R:, :] - rows[B:, ..., -R:, :]
            res[..., :R] = v[..., :R] - cols[:B, ..., :R]
            res[..., -R:] = v[..., -R:] - cols[B:, ..., -R:]
            return res

    def __call__(self, v: Tensor, refine: int | None = None) -> Tensor:
        """``P v`` with ``refine`` Richardson steps (default: the one given at construction)."""
        z = self.apply_circulant(v)
        for _ in range(self.refine if refine is None else refine):
            z.add_(self.apply_circulant(self._residual(v, z)))  # z is ours: no new image-sized buffer
        return z

    def _definite(self, refine: int) -> int:
        """``refine``, lowered by one when odd and ``H_q <= hat K`` is not known (see the class)."""
        return refine if (self._bounded_by_circulant or refine % 2 == 0) else refine - 1

    def with_refine(self, refine: int) -> "SpectralPreconditioner":
        """The same spectrum (shared, not recomputed) with another number of Richardson steps
        (an odd count lowered by one where it could make ``P`` indefinite)."""
        other = copy.copy(self)
        other.refine = self._definite(check_refine(refine))
        return other


class BlockPreconditioner:
    """Applies the inverse curvature blocks, ``(P v)_i = A_i^{-1} v_i`` (the mean-field step)."""

    def __init__(self, problem: Problem, y: Tensor):
        self.L = torch.linalg.cholesky(_positive_definite_blocks(problem.curvature(y)))

    def __call__(self, v: Tensor) -> Tensor:
        rhs = v.permute(0, 2, 3, 1).unsqueeze(-1)
        return torch.cholesky_solve(rhs, self.L).squeeze(-1).permute(0, 3, 1, 2)


#: The accuracy a :class:`ChebyshevPreconditioner` without a given degree is built for: the
#: smallest degree ``m`` with ``1 / T_m(sigma) <= 0.02``, i.e. ``|1 - lambda p(lambda)| <= 0.02`` on
#: the quadratic part's spectrum (``m = 3`` for the solver benchmark's energy, ``sigma = 2.7``).
CHEBYSHEV_ACCURACY = 0.02

#: The accuracy of the quadratic start's Chebyshev polynomial (``y0="quadratic"`` with
#: ``precondition="chebyshev"``) when no ``start_degree`` is given. The start's error is reduced
#: again by the first step's operator, which must also carry the other terms' gradient, so the
#: start needs less: on the solver benchmark, degree 2 (accuracy 0.075) for the start and 3 for the
#: steps reach the 1e-6 gap in one iteration (gaps 4e-7 and 3e-7) with one product fewer than 3 and 3
#: (3e-8 and 2e-8), where 3 for the start and 2 for the steps miss it (1.4e-6 on the photograph).
CHEBYSHEV_START_ACCURACY = 0.1


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
        self._E = E_quadratic
        # s H_q v, prepared once (degree, windows); a duck-typed energy without one: its product at y
        self._hessian = (E_quadratic._hessian_operator(x.detach(), c) if hasattr(E_quadratic, "_hessian_operator")
                         else HessianOperator.of_product(lambda v: E_quadratic._hessian_vector_product(y, x, c, v)))
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

    def with_degree(self, degree: int | None, target: float = CHEBYSHEV_ACCURACY) -> "ChebyshevPreconditioner":
        """The operator of another degree (or ``target``) on the same prepared Hessian and bounds."""
        other = copy.copy(self)
        other._set_degree(check_degree(degree), target)
        return other

    def _count(self, n: int) -> None:
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
        self._count(1)
        z = self._hessian(v, c[-1], c[-2])  # (c_{m-1} H_q + c_{m-2}) v in the product's own pass
        for ck in reversed(c[:-2]):
            self._count(1)
            z = self._hessian(z)
            z = torch.add(z, v, alpha=ck) if graph else z.add_(v, alpha=ck)
        return z

    def _recurrence(self, v: Tensor, graph: bool) -> Tensor:
        """The semi-iteration itself (any degree; its terms stay bounded where monomial
        coefficients would cancel)."""
        if graph:
            z = d = v / self.centre
            r = v
            for a, b in self.coefficients:
                self._count(1)
                r = r - self._hessian(d)
                d = a * d + b * r
                z = z + d
            return z
        z = v / self.centre
        if not self.coefficients:
            return z
        d, r = z.clone(), None
        for a, b in self.coefficients:
            self._count(1)
            hd = self._hessian(d)
            r = torch.sub(v, hd) if r is None else r.sub_(hd)
            d.mul_(a).add_(r, alpha=b)
            z.add_(d)
        return z


#: Degrees ``m`` up to this apply :class:`ChebyshevPreconditioner` by Horner's rule on the
#: polynomial's monomial coefficients: ``m - 1`` products and ``m - 1`` passes, against ``5 (m - 1)``
#: passes of the recurrence (a ``[4, 4, 64, 64]`` float32 batch at ``m = 3``: 0.27 -> 0.22 ms per
#: application). The monomial terms cancel, by a factor :math:`\lambda_- \sum_k |c_k| \lambda_+^k`
#: that grows as about :math:`2.5^m` whatever the interval (6 at ``m = 3``, 100 at ``m = 6``), and
#: float32 round-off with it; higher degrees run the recurrence.
HORNER_DEGREE = 3


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


#: Automatic degrees above this warn (a :class:`~energycrf.solvers.result.SolverWarning`): so many
#: products per application are likely slower than the FFT operator.
CHEBYSHEV_WARN_DEGREE = 32


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
    key = (degree, target)
    if key not in problem._chebyshev:
        if problem._chebyshev:
            problem._chebyshev[key] = next(iter(problem._chebyshev.values())).with_degree(degree, target)
        else:
            Eq = problem_quadratic_part(problem)
            bounds = chebyshev_bounds(Eq, problem.c, *y.shape[-2:])
            problem._chebyshev[key] = ChebyshevPreconditioner(Eq, problem.x, problem.c, y, degree, bounds=bounds,
                                                              counts=problem.counts, target=target)
    return problem._chebyshev[key]


_PRECONDITIONERS = ("blocks", "fft", "chebyshev", "none")


class Preconditioned:
    """A solver option set ``precondition`` (one of ``_PRECONDITIONERS``, or a bool), ``degree`` and
    ``start_degree`` (of ``"chebyshev"``): validated when set, the Chebyshev bounds checked before any
    work, and ``y0="quadratic"`` started from a Chebyshev polynomial when the method uses it (of
    ``start_degree``, automatic: accuracy :data:`CHEBYSHEV_START_ACCURACY`)."""

    precondition: str | bool
    degree: int | None
    start_degree: int | None

    def _set_preconditioner(self, precondition: str | bool | None, degree: int | None,
                            start_degree: int | None = None) -> None:
        kind = {True: "blocks", False: "none", None: "none"}.get(precondition, precondition)
        if kind not in _PRECONDITIONERS:
            raise ValueError(f"precondition: expected one of {_PRECONDITIONERS} (or a bool), got {precondition!r}")
        for name, value in (("degree", degree), ("start_degree", start_degree)):
            if value is not None and kind != "chebyshev":
                raise ValueError(f"{name}: applies to precondition='chebyshev' only, got {name}={value!r} with "
                                 f"precondition={precondition!r}")
        self.precondition, self.degree = kind, check_degree(degree)
        self.start_degree = check_degree(start_degree, "start_degree")

    def check(self, problem: Problem, y0: Tensor) -> None:
        if self.precondition == "chebyshev":
            check_chebyshev(problem)

    def start_operator(self, problem: Problem) -> Any:
        if self.precondition == "chebyshev":
            return chebyshev_preconditioner(problem, problem.x, self.start_degree, CHEBYSHEV_START_ACCURACY)
        return None


def make_preconditioner(kind: str | bool, problem: Problem, y: Tensor, refine: int = 0,
                        degree: int | None = None):
    """``"blocks"`` (or True), ``"fft"``, ``"chebyshev"`` or ``"none"`` (or False) -> a callable or ``None``.

    ``"fft"`` falls back to ``"blocks"`` when the energy has no quadratic term or its quadratic
    part is singular (its inverse would blow up the directions only the other terms hold); ``refine``
    Richardson steps on the exact quadratic part correct its boundary
    (:class:`SpectralPreconditioner`). ``"chebyshev"`` (:class:`ChebyshevPreconditioner` of
    ``degree``) raises a ``ValueError`` where it has no spectral bounds (the solvers check first).
    """
    kind = {True: "blocks", False: "none"}.get(kind, kind)
    if kind not in _PRECONDITIONERS:
        raise ValueError(f"precondition: expected one of {_PRECONDITIONERS} (or a bool), got {kind!r}")
    if kind == "none":
        return None
    if kind == "chebyshev":
        return chebyshev_preconditioner(problem, y, degree)
    if kind == "fft":
        P = spectral_preconditioner(problem, y)
        if P is not None and P.positive_definite:
            return P.with_refine(refine)
    return BlockPreconditioner(problem, y)


def spectral_preconditioner(problem: Problem, y: Tensor) -> SpectralPreconditioner | None:
    """The :class:`SpectralPreconditioner` of ``problem``'s quadratic part (``None`` without
    one), built once per problem: the quadratic part's Hessian does not depend on ``y``, so
    the quadratic start and the solver share one spectrum."""
    if problem._spectral is None:
        Eq = problem_quadratic_part(problem)
        if Eq is None:
            return None
        problem._spectral = SpectralPreconditioner(Eq, problem.x, problem.c, y, counts=problem.counts)
    return problem._spectral


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
    noise, not of the image (``P b`` from zero is ten times worse on the solver benchmark).
    The other terms are a perturbation of this denoised start, so
    their gradient there is close to the one at the minimum: on the solver benchmark one
    L-BFGS iteration from it goes further than two from ``x``. Costs one gradient of the
    quadratic terms, the Richardson steps, and the spectrum's set-up (which L-BFGS with
    ``precondition="fft"`` then reuses); no evaluation of the other terms.
    """
    P = quadratic_start_operator(problem) if operator is None else operator
    x = problem.x.detach()
    with torch.no_grad():
        P._count(1)
        if operator is None:
            return torch.sub(x, P(P._E.grad(x, x, problem.c), refine=QUADRATIC_START_REFINE))
        return torch.sub(x, P(gradient_at_data(P._E, P._hessian, x, problem.c)))


def gradient_at_data(E_quadratic: Any, hessian: HessianOperator, x: Tensor, c: Tensor | None) -> Tensor:
    r"""The quadratic part's gradient at the data, :math:`\nabla E_q(x)`, by its prepared Hessian
    operator ``hessian`` when its terms declare where their gradients are Hessian products from
    (``quadratic_anchor``): the terms anchored at the data (Unary: :math:`2 w (y - x)`) have none
    there, those anchored at zero (Pairwise) have :math:`H_t x`, so

    .. math::  \nabla E_q(x) = \sum_{t:\,\text{zero}} H_t \, x,

    one pass of the zero-anchored terms' own prepared operators (a sum's :attr:`HessianOperator.parts`).
    Otherwise (a term without an anchor, or a duck-typed quadratic part without prepared
    operators) ``E_quadratic.grad(x, x, c)``."""
    terms = list(getattr(E_quadratic, "terms", [E_quadratic]))
    anchors = [getattr(t, "quadratic_anchor", None) for t in terms]
    parts = hessian.parts if len(terms) > 1 else [hessian]
    if (not hasattr(E_quadratic, "_hessian_operator") or parts is None or len(parts) != len(terms)
            or not all(a in ("zero", "data") for a in anchors)):
        return E_quadratic.grad(x, x, c)
    at_zero = [op for op, a in zip(parts, anchors) if a == "zero"]
    if not at_zero:
        return torch.zeros_like(x)
    return (at_zero[0] if len(at_zero) == 1 else HessianOperator.sum(at_zero))(x)


def _require_quadratic(problem: Problem, name: str) -> None:
    if not problem.is_quadratic:
        raise ValueError(_NOT_QUADRATIC.format(name=name, kind=type(problem.E).__name__))


class ConjugateGradient(Preconditioned, Solver):
    """Matrix-free preconditioned conjugate gradients for quadratic energies.

    Args:
        precondition: ``"blocks"`` (inverse curvature blocks, the default; ``True`` too),
            ``"fft"`` (inverse circulant approximation: exact for circular boundaries, so
            CG then ends in one step), ``"chebyshev"`` (:class:`ChebyshevPreconditioner`) or
            ``"none"`` (``False``).
        degree: with ``precondition="chebyshev"``, its degree (``None``: automatic).
        start_degree: with ``precondition="chebyshev"`` and ``y0="quadratic"``, the start's degree
            (``None``: automatic, accuracy :data:`CHEBYSHEV_START_ACCURACY`).
    """

    name = "conjugate_gradient"
    monotone = True

    def __init__(self, precondition: str | bool = "blocks", degree: int | None = None,
                 start_degree: int | None = None):
        self._set_preconditioner(precondition, degree, start_degree)

    def check(self, problem: Problem, y0: Tensor) -> None:
        _require_quadratic(problem, self.name)
        super().check(problem, y0)

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> Any:
        P = make_preconditioner(self.precondition, problem, y, degree=self.degree) or (lambda r: r)
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
