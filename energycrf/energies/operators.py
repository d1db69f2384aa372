r"""Spatial linear operators with an explicit boundary convention, and their adjoints.

``correlate(y, J, boundary)`` computes :math:`u_k = \sum_o J[o]^\top y_{k+o}` (what
``conv2d`` computes; the paper writes it :math:`J \odot y`) with a centred odd window and
an output of the input's size; ``correlate_adjoint`` is its exact adjoint (the paper's
mirrored filter :math:`J^-`). Boundaries:

- ``"zeros"``: sites outside the image are zero (windows at the border see fewer sites);
- ``"circular"``: the image wraps around (a torus), needs the window to fit the image.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

BOUNDARIES = ("zeros", "circular")


def correlate(y: Tensor, weight: Tensor, boundary: str, groups: int = 1) -> Tensor:
    """``conv2d`` of ``y [B, Cin, H, W]`` with ``weight [Cout, Cin/groups, s, s]`` (``s`` odd), same size."""
    pad = weight.shape[-1] // 2
    if boundary == "circular":
        return F.conv2d(F.pad(y, (pad, pad, pad, pad), mode="circular"), weight, groups=groups)
    return F.conv2d(y, weight, padding=pad, groups=groups)


def correlate_adjoint(u: Tensor, weight: Tensor, boundary: str, groups: int = 1) -> Tensor:
    """The adjoint of :func:`correlate` in ``y``: ``conv_transpose2d`` with the same weight."""
    pad = weight.shape[-1] // 2
    if boundary == "circular":
        return _fold_circular_pad(F.conv_transpose2d(u, weight, groups=groups), pad)
    return F.conv_transpose2d(u, weight, padding=pad, groups=groups)


def _fold_circular_pad(z: Tensor, pad: int) -> Tensor:
    """The adjoint of circular padding by ``pad``: add the wrapped borders back onto the image."""
    if pad == 0:
        return z
    height, width = z.shape[-2] - 2 * pad, z.shape[-1] - 2 * pad
    rows = z[..., pad : pad + height, :].clone()
    rows[..., height - pad :, :] += z[..., :pad, :]
    rows[..., :pad, :] += z[..., pad + height :, :]
    out = rows[..., pad : pad + width].clone()
    out[..., width - pad :] += rows[..., :pad]
    out[..., :pad] += rows[..., pad + width :]
    return out
