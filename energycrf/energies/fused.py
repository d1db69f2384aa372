r"""One convolution for the filters of several terms of a sum.

The Field-of-Experts responses :math:`u = J \odot y` (``M`` output channels) and the
pairwise message :math:`W^s y` of a local kernel (a depthwise convolution) read the same
``y`` through windows of the same size. Stacking the pairwise window as ``C`` more output
channels of the filter bank (a ``C x C`` diagonal block per tap) gives both from one
``conv2d`` with ``M + C`` outputs, which costs about as much as the FoE convolution alone
(CPU convolutions vectorise over blocks of output channels). The values are the same up to
rounding: each output channel is the same sum of products.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .field_of_experts import FieldOfExperts
from .kernels import LocalKernel
from .operators import correlate
from .pairwise import Pairwise

__all__ = ["shared_convolutions"]


def shared_convolutions(terms, y: Tensor) -> dict[int, dict[str, Tensor]]:
    """Precomputed operands for terms of a sum, by term index.

    For each :class:`FieldOfExperts` with a :class:`Pairwise` term whose
    :class:`LocalKernel` has the same window size and boundary: ``{"responses": u}`` for the
    former, ``{"message": -2 W^s y}`` for the latter, from one convolution. Other terms are
    absent (they compute their own).
    """
    experts = [k for k, t in enumerate(terms) if type(t) is FieldOfExperts]
    if not experts:
        return {}
    shared: dict[int, dict[str, Tensor]] = {}
    channels = y.shape[1]
    for k, t in enumerate(terms):
        if type(t) is not Pairwise or type(t.kernel) is not LocalKernel:
            continue
        size = 2 * t.kernel.radius + 1
        match = next((f for f in experts if f not in shared and terms[f].kernel_size == size
                      and terms[f].boundary == t.kernel.boundary), None)
        if match is None:
            continue
        foe = terms[match]
        j = foe._filters_like(y)
        window = -2.0 * t.kernel.weights().to(dtype=y.dtype, device=y.device)
        eye = torch.eye(channels, dtype=y.dtype, device=y.device)
        bank = torch.cat([j, eye[:, :, None, None] * window], 0)  # [M + C, C, s, s]
        out = correlate(y, bank, foe.boundary)
        m = j.shape[0]
        shared[match] = {"responses": out[:, :m]}
        shared[k] = {"message": out[:, m:]}
    return shared
