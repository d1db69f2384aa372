r"""One convolution for the filters of several terms of a sum.

The Field-of-Experts responses :math:`u = J \odot y` (``M`` output channels) and the
pairwise message :math:`W^s y` of a local kernel (a depthwise convolution) read the same
``y`` through windows of the same size. Stacking the pairwise window as ``C`` more output
channels of the filter bank (a ``C x C`` diagonal block per tap) gives both from one
``conv2d`` with ``M + C`` outputs, which costs about as much as the FoE convolution alone
(CPU convolutions vectorise over blocks of output channels). ``SumEnergy`` uses it for the
energy alone (``_shared_energy`` of each term) and with the gradient. The values are the
same up to rounding: each output channel is the same sum of products.
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
    :class:`LocalKernel` has the same window size and boundary: ``{"responses": u, "filters": J}``
    for the former, ``{"message": -2 W^s y}`` for the latter, from one convolution. Other terms
    are absent (they compute their own).
    """
    experts, pairs = [], []
    for k, t in enumerate(terms):
        kind = type(t)
        if kind is FieldOfExperts:
            experts.append(k)
        elif kind is Pairwise and type(t.kernel) is LocalKernel:
            pairs.append(k)
    if not experts or not pairs:
        return {}
    shared: dict[int, dict[str, Tensor]] = {}
    for k in pairs:
        kernel = terms[k].kernel
        size, boundary = 2 * kernel.radius + 1, kernel.boundary
        for f in experts:
            foe = terms[f]
            if f in shared or foe.kernel_size != size or foe.boundary != boundary:
                continue
            j = foe._filters_like(y)
            window = kernel.weights().to(dtype=y.dtype, device=y.device)
            eye = torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
            bank = torch.cat([j, eye[:, :, None, None] * (-2.0 * window)], 0)  # [M + C, C, s, s]
            out = correlate(y, bank, boundary)
            m = j.shape[0]
            shared[f] = {"responses": out[:, :m], "filters": j}
            shared[k] = {"message": out[:, m:]}
            break
    return shared
