r"""Spatial linear operators with an explicit boundary convention, and their adjoints.

``correlate(y, J, boundary)`` computes :math:`u_k = \sum_o J[o]^\top y_{k+o}` (what
``conv2d`` computes; the paper writes it :math:`J \odot y`) with a centred odd window and
an output of the input's size; ``correlate_adjoint`` is its exact adjoint, correlation with
the paper's mirrored filter :math:`J^-`. Boundaries:

- ``"zeros"``: sites outside the image are zero (windows at the border see fewer sites);
- ``"circular"``: the image wraps around (a torus), needs the window to fit the image.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BOUNDARIES = ("zeros", "circular")


#: Per-sample ``im2col`` elements of one band of :func:`conv2d` (1 MiB of float64).
BAND_ELEMENTS = 2**17


def conv2d(u: Tensor, weight: Tensor, padding: int = 0, stride: int = 1, groups: int = 1) -> Tensor:
    """``F.conv2d`` (zero padding), computed in bands of output rows for float64 on the CPU.

    float64 convolutions on the CPU unfold the whole input (``im2col``, ``Cin s^2 H W`` values
    per sample) before one matrix product, which on a large image no longer fits in the caches
    and runs from memory. Bands of output rows whose unfolded input fits in
    :data:`BAND_ELEMENTS` give the same sums (each output row sees the same input rows and
    taps) from the caches (figures: docs/benchmarks.md). A depthwise convolution
    (one filter per channel, stride 1: the pairwise message) runs as
    :func:`depthwise_by_shifts`. Other dtypes and devices call ``F.conv2d`` directly (as does
    anything ``F.conv2d`` would refuse, so that its error is the one raised).
    """
    if u.dtype != torch.float64 or u.device.type != "cpu":
        return F.conv2d(u, weight, padding=padding, stride=stride, groups=groups)
    kh, kw = weight.shape[-2:]
    if (stride == 1 and u.dim() == 4 and groups == u.shape[1] == weight.shape[0] and weight.dtype == u.dtype
            and min(u.shape[-2] + 2 * padding - kh, u.shape[-1] + 2 * padding - kw) >= 0):
        return depthwise_by_shifts(u, weight, padding)
    height, width = u.shape[-2] + 2 * padding, u.shape[-1] + 2 * padding
    out_h, out_w = (height - kh) // stride + 1, (width - kw) // stride + 1
    per_row = weight.shape[1] * kh * kw * out_w  # im2col values per output row and sample
    rows = max(4, BAND_ELEMENTS // max(per_row, 1))
    if rows >= out_h:
        return F.conv2d(u, weight, padding=padding, stride=stride, groups=groups)
    if padding:
        u = F.pad(u, (padding, padding, padding, padding))
    bands = [F.conv2d(u[..., r * stride:(min(r + rows, out_h) - 1) * stride + kh, :], weight, stride=stride, groups=groups)
             for r in range(0, out_h, rows)]
    return torch.cat(bands, -2)


def correlate(y: Tensor, weight: Tensor, boundary: str, groups: int = 1) -> Tensor:
    """``conv2d`` of ``y [B, Cin, H, W]`` with ``weight [Cout, Cin/groups, s, s]`` (``s`` odd), same size."""
    pad = weight.shape[-1] // 2
    if boundary == "circular":
        return conv2d(F.pad(y, (pad, pad, pad, pad), mode="circular"), weight, groups=groups)
    return conv2d(y, weight, padding=pad, groups=groups)


#: Channels a CPU convolution computes together (oneDNN's vector block): fewer are padded to it.
CHANNEL_BLOCK = 16
#: Multiply-adds (``B C H W s^2``) from which :func:`correlate_shared` cuts images into bands on
#: the CPU: below it the bands' fixed cost (padding, copies) outweighs the gain (measured on
#: 128 x 128 and 256 x 256 images: docs/benchmarks.md).
BAND_WORK = 2**18


def correlate_shared(y: Tensor, window: Tensor, boundary: str) -> Tensor:
    """``correlate`` of every channel of every sample of ``y [B, C, H, W]`` with one ``s x s``
    window (``s`` odd): the ``n = B C`` images as the channels of one depthwise convolution,
    which fills the CPU's channel blocks better than ``B`` samples of ``C`` channels. Returns a
    contiguous tensor.

    CPU convolutions compute :data:`CHANNEL_BLOCK` channels together and pad fewer up to it:
    a single photograph wastes 15/16 of the work. On the CPU (other than float64, whose
    :func:`conv2d` is a sum of shifts), when ``n < 16`` and the convolution has at least
    :data:`BAND_WORK` multiply-adds, the images are cut into up to ``16 / n`` bands of rows,
    each with its ``r`` halo rows on both sides (the boundary's own padding at the image's
    edges), which fill the block: the same products per output site (the gains by shape:
    docs/benchmarks.md). :class:`SharedCorrelation` makes these choices once for a shape.
    """
    if y.shape[0] * y.shape[1] == 0:  # an empty batch: grouped convolutions need at least one group
        return torch.zeros_like(y)
    plan = SharedCorrelation(y.shape, window.shape[-1], boundary, y.device, y.dtype)
    return plan(y, plan.weight(window))


class SharedCorrelation:
    """:func:`correlate_shared` for inputs of one shape, device and dtype: the layout (bands of
    rows or not) chosen once, and a window's convolution weight made once (:meth:`weight`) for
    every product with it (a prepared Hessian operator applies the same window many times)."""

    def __init__(self, shape: torch.Size, size: int, boundary: str, device: torch.device, dtype: torch.dtype):
        B, C, H, W = shape
        self.shape, self.size, self.boundary = torch.Size(shape), size, boundary
        self.r, self.n = size // 2, B * C
        self.bands = 1
        if (torch.device(device).type == "cpu" and dtype != torch.float64 and self.n < CHANNEL_BLOCK
                and self.n * H * W * size * size >= BAND_WORK):  # halos at most half a band
            self.bands = max(1, min(CHANNEL_BLOCK // self.n, H // (4 * self.r) if self.r else H))
        self.rows = -(-H // self.bands)  # the last band may reach past the image: zero rows, cropped below

    def weight(self, window: Tensor) -> Tensor:
        """The ``s x s`` window as the grouped convolution's weight (a view)."""
        s = self.size
        return window.expand(self.n * self.bands, 1, s, s)

    def __call__(self, y: Tensor, weight: Tensor) -> Tensor:
        """``correlate_shared(y, window)`` with ``weight = self.weight(window)``."""
        B, C, H, W = self.shape
        n, r, bands, rows = self.n, self.r, self.bands, self.rows
        if bands <= 1:
            return correlate(y.reshape(1, n, H, W), weight, self.boundary, groups=n).view(y.shape)
        if self.boundary == "circular":
            padded = F.pad(F.pad(y, (r, r, r, r), mode="circular"), (0, 0, 0, rows * bands - H))
        else:
            padded = F.pad(y, (r, r, r, r + rows * bands - H))
        padded = padded.reshape(n, -1, W + 2 * r)
        # band b: padded rows [b rows, (b + 1) rows + 2 r), as channel (image, band); narrow and
        # stack (not unfold, whose backward has no batching rule for torch.func.vmap)
        stacked = torch.stack([padded.narrow(1, b * rows, rows + 2 * r) for b in range(bands)], 1)
        out = conv2d(stacked.reshape(1, n * bands, rows + 2 * r, W + 2 * r), weight,
                     groups=n * bands)  # [1, n bands, rows, W]
        return out.reshape(n, bands * rows, W)[:, :H].reshape(B, C, H, W).contiguous()


def window_spectrum(small: Tensor, H: int, W: int, real: bool = False) -> Tensor:
    """The 2-D real DFT on the ``H x W`` grid of ``s x s`` taps centred at offset ``(0, 0)``
    (``s = 2R + 1`` odd, ``s <= H, W``): ``rfft2`` of the taps placed with their centre at the
    origin, ``[..., H, W//2+1]`` (with ``real``, its real part only, in the taps' dtype).

    With the taps at offsets ``a, b in [-R, R]``,
    :math:`\\hat K(\\omega, \\nu) = \\sum_{a, b} e^{-2\\pi i a \\omega / H} \\, t_{ab} \\, e^{-2\\pi i b \\nu / W}`:
    two products with ``H x s`` and ``s x (W//2+1)`` Fourier factors (``s = 2R + 1``) instead
    of an image of zeros with ``s^2`` taps on it and a full-size FFT. Its real part is
    :math:`C_H t C_W - S_H t S_W` with the cosine and sine factors, one product
    :math:`[C_H, S_H] \\, [t C_W; -t S_W]` whose result is the only image-sized buffer (cheaper
    than the real part of the FFT of the placed taps: docs/benchmarks.md).
    Float64 numpy taps (a host-side bound) give the real part as a numpy array.
    """
    if isinstance(small, np.ndarray):  # float64 taps on the host: the same product in numpy
        if not real:
            raise ValueError("window_spectrum: numpy taps give the real part only (real=True)")
        left, cos_w, sin_w = _numpy_fourier_factors(H, W, small.shape[-1])
        return left @ np.concatenate([small @ cos_w, -(small @ sin_w)], -2)
    if real:
        left, cos_w, sin_w = _fourier_factors(H, W, small.shape[-1], True, small.dtype, small.device)
        return left @ torch.cat([small @ cos_w, (small @ sin_w).neg_()], -2)
    cdtype = (small.new_zeros(()) * 1j).dtype  # the complex dtype of the taps' precision
    rows, cols = _fourier_factors(H, W, small.shape[-1], False, cdtype, small.device)
    return rows @ small.to(cdtype) @ cols


def grid_constant(make):
    """Memoise ``make(*hashable_args)``, a function that builds constant tensors of a grid (Fourier
    factors, border masks): built once per size, dtype and device, never modified by callers.
    Inside a ``torch.func`` transform the tensors are built afresh (tensors made there belong to it)."""
    cached = functools.lru_cache(maxsize=64)(make)

    @functools.wraps(make)
    def get(*args):
        if torch._C._functorch.maybe_current_level() is not None:
            return make(*args)
        return cached(*args)

    get.cache_clear = cached.cache_clear
    return get


@grid_constant
def _fourier_factors(H: int, W: int, s: int, real: bool, dtype: torch.dtype, device: torch.device) -> tuple:
    """The Fourier factors of :func:`window_spectrum` for an ``H x W`` grid and ``s x s`` taps (constants
    of the grid, made once, in float64 then cast): ``([C_H, S_H], C_W, S_W)`` or, complex,
    ``(exp(-i rows), exp(-i cols))``. Callers must not modify them."""
    f64 = dict(device=device, dtype=torch.float64)
    offsets = torch.arange(s, **f64) - s // 2
    rows = 2 * torch.pi * torch.outer(torch.arange(H, **f64), offsets) / H  # [H, s] phases
    cols = 2 * torch.pi * torch.outer(offsets, torch.arange(W // 2 + 1, **f64)) / W  # [s, W']
    if real:
        return torch.cat([rows.cos(), rows.sin()], -1).to(dtype), cols.cos().to(dtype), cols.sin().to(dtype)
    return torch.exp(-1j * rows).to(dtype), torch.exp(-1j * cols).to(dtype)


@functools.lru_cache(maxsize=64)
def _numpy_fourier_factors(H: int, W: int, s: int) -> tuple:
    """The real Fourier factors of :func:`_fourier_factors` as float64 numpy arrays (host taps)."""
    return tuple(f.numpy() for f in _fourier_factors(H, W, s, True, torch.float64, torch.device("cpu")))


def adjoint_weight(weight: Tensor) -> Tensor:
    """The mirrored filter bank :math:`J^-`: taps flipped, input and output channels swapped."""
    return weight.flip(-1, -2).transpose(0, 1)


def correlate_adjoint(u: Tensor, weight: Tensor, boundary: str) -> Tensor:
    """The adjoint of :func:`correlate` in ``y``: correlation with the mirrored filters :math:`J^-`.

    Exact for both boundaries (stride 1, odd centred window), and faster on CPU than
    ``conv_transpose2d``. On the CPU, with a zero boundary and few output channels (at most
    4, e.g. the Field-of-Experts gradient of a 4-channel latent) it runs as
    :func:`correlate_by_phases` (a CPU blocking trick; other devices convolve directly).
    """
    adjoint = adjoint_weight(weight)
    if boundary == "zeros" and adjoint.shape[0] <= 4 and u.device.type == "cpu":
        return correlate_by_phases(u, adjoint)
    return correlate(u, adjoint, boundary)


def correlate_by_phases(u: Tensor, weight: Tensor) -> Tensor:
    """``correlate(u, weight, "zeros")`` as one stride-2 convolution that computes the four
    output phases ``(h mod 2, w mod 2)`` as ``4 Cout`` channels, then interleaves them (the
    layout of ``pixel_shuffle``).

    Phase ``(a, b)`` is the window shifted by ``(a, b)`` inside an ``(s+1) x (s+1)`` kernel: the
    same products and sums per output site (and zeros). CPU convolutions vectorise over
    blocks of 16 output channels, so ``Cout <= 4`` outputs waste most of each block; four
    phases fill it, on a quarter of the sites: about half the time for ``Cout = 4``.
    Odd sizes get one zero row/column (the zero boundary), cropped afterwards.
    """
    s = weight.shape[-1]
    height, width = u.shape[-2:]
    phases = torch.stack([F.pad(weight, (b, 1 - b, a, 1 - a)) for a in (0, 1) for b in (0, 1)], 1)
    phases = phases.reshape(4 * weight.shape[0], *weight.shape[1:2], s + 1, s + 1)
    odd_h, odd_w = height % 2, width % 2
    if odd_h or odd_w:
        u = F.pad(u, (0, odd_w, 0, odd_h))
    phased = conv2d(u, phases, padding=s // 2, stride=2)  # channel 4 c + 2 a + b: phase (a, b) of c
    *lead, c4, h2, w2 = phased.shape
    # out[c, 2 i + a, 2 j + b] = phased[4 c + 2 a + b, i, j]: F.pixel_shuffle's layout, as one
    # strided copy (pixel_shuffle's CPU kernel is slower on these shapes)
    out = phased.reshape(*lead, c4 // 4, 2, 2, h2, w2).movedim((-2, -1), (-4, -2)).reshape(*lead, c4 // 4, 2 * h2, 2 * w2)
    return out[..., :height, :width].contiguous() if (odd_h or odd_w) else out


def depthwise_by_shifts(u: Tensor, weight: Tensor, padding: int = 0) -> Tensor:
    """A depthwise ``F.conv2d`` (``weight [C, 1, kh, kw]``, ``groups = C``, stride 1) as a sum of
    shifted inputs, :math:`\\sum_{a, b} w_{c, a, b} \\, u_{c, h + a, w + b}`: one pass over the
    image per tap.

    float64 on the CPU has no vectorised depthwise kernel, and ``F.conv2d`` (banded or not) is
    several times slower than ``s^2`` shifted multiply-adds, each a vectorised pass (figures:
    docs/benchmarks.md). Every tap is applied, zeros included:
    no data-dependent branch, so ``torch.func`` transforms see one graph.
    """
    kh, kw = weight.shape[-2:]
    if padding:
        u = F.pad(u, (padding, padding, padding, padding))
    out_h, out_w = u.shape[-2] - kh + 1, u.shape[-1] - kw + 1
    taps = weight[:, 0].permute(1, 2, 0)[..., None, None]  # [kh, kw, C, 1, 1]
    out = u[..., :out_h, :out_w] * taps[0, 0]
    for a in range(kh):
        for b in range(kw):
            if a or b:
                out.addcmul_(u[..., a:a + out_h, b:b + out_w], taps[a, b])
    return out
