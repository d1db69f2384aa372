"""The FFT preconditioner: the inverse of the circulant approximation of the quadratic part.

The quadratic part's Hessian :math:`H_q` (Unary + Pairwise) is, away from the border, the
convolution with its impulse response at an interior site; a 2-D FFT diagonalises that
circulant into one ``C x C`` matrix :math:`\\hat K(\\omega)` per frequency, whose inverse is
:class:`SpectralPreconditioner`'s ``P0``. Richardson steps on the exact :math:`H_q` correct the
border (``refine``). The quadratic start and L-BFGS with ``precondition="fft"`` share one per
problem (:func:`spectral_preconditioner`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from ...energies.operators import window_spectrum
from ..problem import Problem
from ..quadratic_part import apply_spectrum, impulse_taps, problem_quadratic_part

__all__ = ["SpectralPreconditioner", "check_refine", "spectral_preconditioner"]


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
        taps = impulse_taps(prob, y, prob.grad(y), centre=True)
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
    frobenius = torch.view_as_real(K).square().sum((-3, -2, -1)).amax().sqrt()  # (cheaper than matrix_norm)
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
        self.count_products(spent)
        H, W = y.shape[-2:]
        radius = taps.shape[-1] // 2 if crop else None  # the crop path: a declared radius, 2R + 1 <= H, W
        diag = taps.diagonal(dim1=1, dim2=2).movedim(-1, 1)  # [B', C, h, w]
        self.diagonal = bool(torch.count_nonzero(taps) == torch.count_nonzero(diag))  # channels do not mix
        if self.diagonal:
            # point-symmetric real taps: a real spectrum (the symmetric part of the DFT); contiguous,
            # since reductions over the strided real view are far slower on the CPU
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
        self.quadratic_part = E_quadratic
        self._x, self._c, self._y = x, c, y
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

    def count_products(self, n: int) -> None:
        """Count ``n`` products with the quadratic part (``counts["quadratic_hvp"]``)."""
        self.counts["quadratic_hvp"] = self.counts.get("quadratic_hvp", 0) + n

    def apply_circulant(self, v: Tensor) -> Tensor:
        if self.diagonal:
            H, W = v.shape[-2:]
            return torch.fft.irfft2(torch.fft.rfft2(v).mul_(self.kinv), s=(H, W))
        return apply_spectrum(self.Kinv, v)

    def _residual(self, v: Tensor, z: Tensor) -> Tensor:
        """``v - H_q z`` for the Richardson iterates ``z`` of ``v`` (``P0 v`` plus ``P0`` of
        frame-supported vectors): with a frame, only there, since it vanishes inside."""
        self.count_products(1)
        with torch.no_grad():
            if self.frame is None:
                return v - self.quadratic_part._hessian_vector_product(self._y, self._x, self._c, z)  # exact: H_q is constant
            R, R2, B = self.frame, 2 * self.frame, z.shape[0]
            hv = self.quadratic_part._hessian_vector_product
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


def spectral_preconditioner(problem: Problem, y: Tensor) -> SpectralPreconditioner | None:
    """The :class:`SpectralPreconditioner` of ``problem``'s quadratic part (``None`` without
    one), built once per problem: the quadratic part's Hessian does not depend on ``y``, so
    the quadratic start and the solver share one spectrum."""

    def build() -> SpectralPreconditioner | None:
        Eq = problem_quadratic_part(problem)
        return None if Eq is None else SpectralPreconditioner(Eq, problem.x, problem.c, y, counts=problem.counts)

    return problem.prepare("spectral", build)
