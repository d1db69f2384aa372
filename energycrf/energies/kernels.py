r"""Spatial kernels :math:`W^s` of the pairwise term and their message operator.

A kernel is symmetric, non-negative, with zero diagonal. It gives the message-passing step
of Algorithm 1, :math:`(W^s y)_i = \sum_j W^s_{ij} y_j` (each channel alike), and the
degree :math:`d_i = \sum_j W^s_{ij}`.

- :class:`LocalKernel`: radius ``r`` window (Gaussian or learnable), a depthwise convolution;
- :class:`LongRangeKernel`: a stationary kernel coupling every pair of sites, applied by FFT
  in :math:`O(n \log n)` (the long-range interactions that local FoE filters cannot carry);
- :class:`DenseKernel`: an explicit ``n x n`` matrix for small images, the reference the
  others are tested against.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_choice, check_int, check_positive
from .operators import BOUNDARIES, SharedCorrelation, correlate_shared, grid_constant, window_spectrum

__all__ = ["SpatialKernel", "LocalKernel", "LongRangeKernel", "DenseKernel"]


class SpatialKernel(nn.Module):
    """Base class of spatial kernels :math:`W^s`.

    Attributes:
        radius: Chebyshev radius beyond which ``W^s_ij = 0``, or ``None`` (global coupling).
        periodic: whether the coupling wraps around the image borders.
        translation_invariant: whether ``W^s_ij`` depends on ``j - i`` alone (away from the border).
    """

    radius: int | None = None
    periodic: bool = False
    translation_invariant: bool = False

    def message(self, y: Tensor) -> Tensor:
        r""":math:`(W^s y)_i = \sum_j W^s_{ij} y_j` for ``y [B, C, H, W]``, each channel alike."""
        raise NotImplementedError

    def scaled_message(self, y: Tensor, scale: float) -> Tensor:
        r""":math:`s\,(W^s y)`, a new tensor (callers may update it in place); local kernels fold
        ``s`` into the window (no extra pass)."""
        return scale * self.message(y)

    def message_operator(self, shape: torch.Size, dtype: torch.dtype, device: torch.device):
        r"""``(v, s) -> s W^s v`` for images ``v`` of this shape, dtype and device, with what depends
        on neither ``v`` nor ``s`` prepared once (a Hessian operator applies it many times). Here
        :meth:`scaled_message` itself; local kernels keep their window and its scalings."""
        return self.scaled_message

    def degree(self, height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        r""":math:`d_i = \sum_j W^s_{ij}`, ``Tensor[H, W]``."""
        ones = torch.ones(1, 1, height, width, dtype=dtype, device=device)
        return self.message(ones)[0, 0]

    def laplacian_bound(self, height: int, width: int) -> float:
        r"""An upper bound on the largest eigenvalue of the graph Laplacian :math:`D - W^s` on
        ``height x width`` images. Here Gershgorin's, :math:`2 \max_i d_i` (the row sums of
        :math:`|D - W^s|` for non-negative weights); kernels with a spectrum give a tighter one."""
        device = next((t.device for t in [*self.parameters(), *self.buffers()]), None)  # the kernel's own
        return 2 * float(self.degree(height, width, torch.float64, device).detach().max())

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` when the kernel cannot act on an image of this size."""

    def dense(self, height: int, width: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """The explicit matrix ``W^s`` (``n x n``, ``n = H W``, row-major sites), built from :meth:`message`."""
        n = height * width
        basis = torch.eye(n, dtype=dtype, device=device).reshape(n, 1, height, width)
        return self.message(basis).reshape(n, n).T.contiguous()


class LocalKernel(SpatialKernel):
    r"""A local kernel of radius ``r``: :math:`W^s_{ij} = k(j - i)` for :math:`0 < \|j-i\|_\infty \le r`.

    Gaussian by default, :math:`k(o) \propto \exp(-\|o\|^2 / 2\sigma^2)`, scaled so that an
    interior site has degree ``strength``; with ``learnable=True`` the weights are free
    (softplus-positive, point-symmetric, zero centre) and start from that Gaussian.

    Args:
        radius: the window radius ``r >= 1``.
        sigma: the Gaussian width (in sites).
        strength: the interior degree :math:`d_i` of the initial kernel.
        learnable: learn the window weights.
        boundary: ``"zeros"`` (border sites have smaller degree) or ``"circular"`` (wraps;
            needs ``2r + 1 <= H, W``).
    """

    translation_invariant = True

    def __init__(
        self,
        radius: int = 2,
        sigma: float = 1.0,
        strength: float = 1.0,
        learnable: bool = False,
        boundary: str = "zeros",
    ):
        super().__init__()
        self.radius = check_int("radius", radius, minimum=1)
        check_positive("sigma", sigma, allow_tensor=False)
        check_positive("strength", strength, allow_tensor=False)
        self.boundary = check_choice("boundary", boundary, BOUNDARIES)
        self.periodic = boundary == "circular"
        self.sigma, self.strength, self.learnable = float(sigma), float(strength), bool(learnable)
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        gauss = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
        gauss[radius, radius] = 0
        gauss = strength * gauss / gauss.sum()
        self.register_buffer("centre_mask", (gauss > 0).to(torch.get_default_dtype()), persistent=False)
        if learnable:
            # inverse softplus, so weights() starts at the Gaussian
            raw = torch.where(gauss > 20, gauss, torch.log(torch.expm1(gauss.clamp_min(1e-12))))
            self.raw_weights = nn.Parameter(raw.to(torch.get_default_dtype()))
        else:
            self.register_buffer("fixed_weights", gauss.to(torch.get_default_dtype()))

    def weights(self) -> Tensor:
        """The window ``k [2r+1, 2r+1]``: non-negative, point-symmetric, zero centre."""
        if not self.learnable:
            return self.fixed_weights
        k = F.softplus(self.raw_weights) * self.centre_mask
        return 0.5 * (k + k.flip(0, 1))

    def check_size(self, height, width):
        if self.periodic and 2 * self.radius + 1 > min(height, width):
            raise ValueError(
                f"a circular LocalKernel of radius {self.radius} needs H and W >= {2 * self.radius + 1}, "
                f"got H={height}, W={width}; use boundary='zeros' or a smaller radius"
            )

    def message(self, y):
        return self.scaled_message(y, 1.0)

    def scaled_message(self, y, scale):
        k = self.weights().to(dtype=y.dtype, device=y.device)
        if scale != 1.0:
            k = scale * k
        return correlate_shared(y, k, self.boundary)

    def message_operator(self, shape, dtype, device):
        k = self.weights().to(dtype=dtype, device=device)
        plan = SharedCorrelation(shape, k.shape[-1], self.boundary, device, dtype)
        weights: dict[float, Tensor] = {}  # by scale: a Chebyshev application uses two or three

        def message(v: Tensor, scale: float) -> Tensor:
            if v.shape != plan.shape or v.dtype != dtype or v.device != k.device:
                return self.scaled_message(v, scale)
            w = weights.get(scale)
            if w is None:
                w = weights[scale] = plan.weight(k if scale == 1.0 else scale * k)
            return plan(v, w)

        return message

    def laplacian_bound(self, height, width):
        r"""The largest value of the Laplacian stencil's spectrum on the ``height x width`` grid,
        :math:`\max_\omega \sum_o k(o) (1 - \cos \omega^\top o)`: the largest eigenvalue for a
        circular boundary; for zeros an upper bound, since the circulant Laplacian adds the
        wrap-around edges' Laplacian (positive semi-definite, the weights being non-negative).
        Gershgorin's bound when the window does not fit the image."""
        if 2 * self.radius + 1 > min(height, width):
            return super().laplacian_bound(height, width)
        k = self.weights().detach()
        # 25 numbers: on the host, in numpy, a memoised function of their values; inside a
        # torch.func transform, whose wrapped tensors have no host copy, in torch
        if torch._C._functorch.maybe_current_level() is None:
            taps = k.cpu().numpy().astype(np.float64)
            return _laplacian_bound_of_taps(taps.tobytes(), taps.shape[-1], height, width)
        return float(_laplacian_spectrum(k.to(torch.float64), self.radius, height, width).max())

    def degree(self, height, width, dtype, device):
        k = self.weights().to(dtype=dtype, device=device)
        if self.periodic:
            return k.sum().expand(height, width)
        # Zero boundary: d[h, w] = sum_{a, b} k[a, b] [h + a - r inside] [w + b - r inside]
        # = (R k C^T)[h, w] with the 0/1 window-inside matrices R [H, 2r+1] and C [W, 2r+1]:
        # two tiny matrix products instead of a convolution of an image of ones.
        r = self.radius
        return _inside(height, r, dtype, device) @ k @ _inside(width, r, dtype, device).T

    def extra_repr(self):
        kind = "learnable" if self.learnable else f"gaussian sigma={self.sigma:g}"
        return f"radius={self.radius}, {kind}, strength={self.strength:g}, boundary={self.boundary!r}"


class LongRangeKernel(SpatialKernel):
    r"""A stationary kernel that couples every pair of sites, applied by FFT.

    :math:`W^s_{ij} = \text{weight}\cdot\exp(-\|j - i\|^2 / 2\sigma^2)` for all :math:`i \ne j`
    (offsets taken on the torus with ``boundary="circular"``; plain offsets with
    ``boundary="zeros"``, where the FFT is zero-padded to a linear convolution).
    Cost :math:`O(n \log n)`. Its coupling is global: colour classes cannot split it.

    Args:
        sigma: the Gaussian width (in sites).
        weight: the kernel's peak value.
        boundary: ``"circular"`` or ``"zeros"``.
    """

    radius = None

    def __init__(self, sigma: float = 8.0, weight: float = 0.01, boundary: str = "circular"):
        super().__init__()
        check_positive("sigma", sigma, allow_tensor=False)
        check_positive("weight", weight, allow_tensor=False)
        self.sigma, self.weight = float(sigma), float(weight)
        self.boundary = check_choice("boundary", boundary, BOUNDARIES)
        self.periodic = boundary == "circular"
        # global coupling: every site is near the border unless the grid wraps
        self.translation_invariant = self.periodic

    def spectrum(self, height: int, width: int, dtype: torch.dtype, device) -> Tensor:
        """The kernel's real FFT on the (padded) grid used by :meth:`message`."""
        grid_h, grid_w = (height, width) if self.periodic else (2 * height, 2 * width)
        dh = torch.arange(grid_h, dtype=dtype, device=device)
        dw = torch.arange(grid_w, dtype=dtype, device=device)
        dh = torch.minimum(dh, grid_h - dh)  # torus offsets (for zeros: |offset| < H, pad rows unused)
        dw = torch.minimum(dw, grid_w - dw)
        k = self.weight * torch.exp(-(dh[:, None] ** 2 + dw[None, :] ** 2) / (2 * self.sigma**2))
        k[0, 0] = 0
        if not self.periodic:  # offsets of magnitude H (W) never pair two sites of the image
            k[height, :] = 0
            k[:, width] = 0
        return torch.fft.rfft2(k)

    def message(self, y):
        height, width = y.shape[-2:]
        spectrum = self.spectrum(height, width, y.dtype, y.device)
        if self.periodic:
            return torch.fft.irfft2(torch.fft.rfft2(y) * spectrum, s=(height, width))
        padded = torch.fft.irfft2(torch.fft.rfft2(y, s=(2 * height, 2 * width)) * spectrum, s=(2 * height, 2 * width))
        return padded[..., :height, :width]

    def degree(self, height, width, dtype, device):
        if self.periodic:
            total = self.spectrum(height, width, dtype, device)[0, 0].real
            return total.expand(height, width)
        return super().degree(height, width, dtype, device)

    def extra_repr(self):
        return f"sigma={self.sigma:g}, weight={self.weight:g}, boundary={self.boundary!r} (FFT)"


class DenseKernel(SpatialKernel):
    """An explicit ``W^s`` (``n x n``, symmetric, non-negative, zero diagonal) for images of ``n = H W`` sites.

    The reference implementation: ``O(n^2)`` memory and time.
    """

    radius = None

    def __init__(self, matrix: Tensor):
        super().__init__()
        if not isinstance(matrix, Tensor) or matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            got = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
            raise ValueError(f"matrix must be a square [n, n] tensor, got {got}")
        if not matrix.is_floating_point():
            raise TypeError(f"matrix must have a floating-point dtype, got {matrix.dtype}")
        if not bool(torch.isfinite(matrix).all()):
            raise ValueError("matrix must be finite")
        matrix = matrix.detach()
        tol = 1e-10 * (1 + float(matrix.abs().max()))  # round-off of kernels built by FFT
        if not torch.allclose(matrix, matrix.T, rtol=0, atol=tol):
            raise ValueError("matrix must be symmetric (W^s_ij = W^s_ji)")
        if bool((matrix < -tol).any()):
            raise ValueError(f"matrix must be non-negative, got a minimum of {float(matrix.min()):.3g}")
        if bool((matrix.diagonal().abs() > tol).any()):
            raise ValueError("matrix must have a zero diagonal (no site interacts with itself)")
        self.register_buffer("matrix", matrix.clone())

    def check_size(self, height, width):
        if height * width != self.matrix.shape[0]:
            raise ValueError(
                f"DenseKernel holds {self.matrix.shape[0]} sites but the image has H*W = {height}*{width} = "
                f"{height * width}"
            )

    def message(self, y):
        b, c, h, w = y.shape
        matrix = self.matrix.to(dtype=y.dtype, device=y.device)
        return (y.reshape(b, c, h * w) @ matrix.T).reshape(b, c, h, w)

    def degree(self, height, width, dtype, device):
        return self.matrix.to(dtype=dtype, device=device).sum(1).reshape(height, width)

    def extra_repr(self):
        return f"n={self.matrix.shape[0]}"


def _laplacian_spectrum(k, radius: int, height: int, width: int):
    r"""The spectrum :math:`\sum_o k(o) (1 - \cos \omega^\top o)` of the Laplacian stencil of the
    window ``k`` (float64, numpy or torch) on the ``height x width`` frequency grid."""
    stencil = -k
    stencil[radius, radius] = k.sum()
    return window_spectrum(stencil, height, width, real=True)


@functools.lru_cache(maxsize=256)
def _laplacian_bound_of_taps(taps: bytes, size: int, height: int, width: int) -> float:
    """:meth:`LocalKernel.laplacian_bound` of the float64 taps given by their bytes: a pure
    function of these numbers, memoised (a solver asks for it at every solve)."""
    k = np.frombuffer(taps, dtype=np.float64).reshape(size, size)
    return float(_laplacian_spectrum(k, size // 2, height, width).max())


@grid_constant
def _inside(n: int, radius: int, dtype: torch.dtype, device) -> Tensor:
    """``[n, 2r+1]``: 1 where the window offset ``a - r`` from site ``i`` lands inside ``[0, n)``,
    i.e. ``r - i <= a <= n - 1 - i + r``; with columns flipped (``a' = 2r - a``) that is the band
    ``r + 1 - n <= a' - i <= r`` (``triu``/``tril``). A constant of the grid, made once per size
    (callers must not modify it)."""
    band = torch.ones(n, 2 * radius + 1, dtype=dtype, device=device).tril_(radius).triu_(radius + 1 - n)
    return band.flip(1)


def default_kernel() -> SpatialKernel:
    """The kernel ``Pairwise`` uses when none is given: Gaussian, radius 2, sigma 1, interior degree 1."""
    return LocalKernel(radius=2, sigma=1.0, strength=1.0)

