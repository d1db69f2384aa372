r"""Spatial linear operators with an explicit boundary convention, and their adjoints.

``correlate(y, J, boundary)`` computes :math:`u_k = \sum_o J[o]^\top y_{k+o}` (what
``conv2d`` computes; the paper writes it :math:`J \odot y`) with a centred odd window and
an output of the input's size; ``correlate_adjoint`` is its exact adjoint, correlation with
the paper's mirrored filter :math:`J^-`. Boundaries:

- ``"zeros"``: sites outside the image are zero (windows at the border see fewer sites);
- ``"circular"``: the image wraps around (a torus), needs the window to fit the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BOUNDARIES = ("zeros", "circular")


def correlate(y: Tensor, weight: Tensor, boundary: str, groups: int = 1) -> Tensor:
    """``conv2d`` of ``y [B, Cin, H, W]`` with ``weight [Cout, Cin/groups, s, s]`` (``s`` odd), same size."""
    pad = weight.shape[-1] // 2
    if boundary == "circular":
        return F.conv2d(F.pad(y, (pad, pad, pad, pad), mode="circular"), weight, groups=groups)
    return F.conv2d(y, weight, padding=pad, groups=groups)


def adjoint_weight(weight: Tensor) -> Tensor:
    """The mirrored filter bank :math:`J^-`: taps flipped, input and output channels swapped."""
    return weight.flip(-1, -2).transpose(0, 1)


def correlate_adjoint(u: Tensor, weight: Tensor, boundary: str) -> Tensor:
    """The adjoint of :func:`correlate` in ``y``: correlation with the mirrored filters :math:`J^-`.

    Exact for both boundaries (stride 1, odd centred window), and faster on CPU than
    ``conv_transpose2d``. With a zero boundary and few output channels (at most 4, e.g. the
    Field-of-Experts gradient of a 4-channel latent) it runs as :func:`correlate_by_phases`.
    """
    adjoint = adjoint_weight(weight)
    if boundary == "zeros" and adjoint.shape[0] <= 4:
        return correlate_by_phases(u, adjoint)
    return correlate(u, adjoint, boundary)


def correlate_by_phases(u: Tensor, weight: Tensor) -> Tensor:
    """``correlate(u, weight, "zeros")`` as one stride-2 convolution that computes the four
    output phases ``(h mod 2, w mod 2)`` as ``4 Cout`` channels, then ``pixel_shuffle``.

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
    out = F.pixel_shuffle(F.conv2d(u, phases, stride=2, padding=s // 2), 2)
    return out[..., :height, :width].contiguous() if (odd_h or odd_w) else out
