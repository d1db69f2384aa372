r"""Spatial linear operators with an explicit boundary convention, and their adjoints.

``correlate(y, J, boundary)`` computes :math:`u_k = \sum_o J[o]^\top y_{k+o}` (what
``conv2d`` computes; the paper writes it :math:`J \odot y`) with a centred odd window and
an output of the input's size; ``correlate_adjoint`` is its exact adjoint, correlation with
the paper's mirrored filter :math:`J^-`. Boundaries:

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


def adjoint_weight(weight: Tensor) -> Tensor:
    """The mirrored filter bank :math:`J^-`: taps flipped, input and output channels swapped."""
    return weight.flip(-1, -2).transpose(0, 1)


def correlate_adjoint(u: Tensor, weight: Tensor, boundary: str) -> Tensor:
    """The adjoint of :func:`correlate` in ``y``: correlation with the mirrored filters :math:`J^-`.

    Exact for both boundaries (stride 1, odd centred window), and faster on CPU than
    ``conv_transpose2d``.
    """
    return correlate(u, adjoint_weight(weight), boundary)
