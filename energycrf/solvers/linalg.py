"""Small batched linear algebra the solvers share: per-sample reductions of ``[B, ...]``
tensors and the per-site ``C x C`` block solve of the majoriser step (``y_i <- y_i - A_i^{-1} g_i``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..energies.energy import _sample_dot

__all__ = ["sample_dot", "sample_norm", "positive_definite_blocks", "block_solve"]

sample_dot = _sample_dot  # per-sample inner product of two [B, ...] tensors -> [B] (the energies' own)


def sample_norm(a: Tensor) -> Tensor:
    """Per-sample Euclidean norm of a ``[B, ...]`` tensor -> ``[B]``."""
    return torch.linalg.vector_norm(a, dim=tuple(range(1, a.dim())))


def positive_definite_blocks(A: Tensor) -> Tensor:
    """Symmetrise ``[..., C, C]`` blocks and make the non-PD ones positive definite.

    Blocks whose Cholesky factorisation fails (singular or indefinite curvature, e.g. a
    user term whose exact Hessian block is not positive) are rebuilt from their
    eigendecomposition with eigenvalues ``max(|lambda|, floor)`` (negative curvature
    mirrored, as in saddle-free Newton); ``floor`` is ``1e-6`` times the block's (or, for
    an all-zero block, the batch's) largest eigenvalue.
    """
    A = 0.5 * (A + A.transpose(-1, -2))
    _, info = torch.linalg.cholesky_ex(A)
    bad = info != 0
    if not bool(bad.any()):
        return A
    lam, V = torch.linalg.eigh(A[bad])
    big = lam.abs().amax(-1, keepdim=True)
    glob = A.diagonal(dim1=-2, dim2=-1).abs().amax()
    tiny = torch.finfo(A.dtype).eps ** 0.5
    floor = torch.clamp(1e-6 * torch.maximum(big, glob.expand_as(big)), min=tiny)
    lam = torch.maximum(lam.abs(), floor)
    A = A.clone()
    A[bad] = (V * lam.unsqueeze(-2)) @ V.transpose(-1, -2)
    return A


def block_solve(A: Tensor, g: Tensor) -> Tensor:
    """Solve ``A_i d_i = g_i`` at every site: ``A`` is ``[B, H, W, C, C]``, ``g`` ``[B, C, H, W]``.

    Returns ``d`` shaped like ``g``. Blocks are symmetrised and, where not positive
    definite, lifted to a small positive floor (see :func:`positive_definite_blocks`)
    so that ``-d`` is always a descent direction. One batched Cholesky solve, no loop.
    """
    if A.shape[-1] == 1:  # scalar sites (grayscale): a division, same positive floor as below
        a = A[..., 0, 0]
        bad = ~(a > 0)
        if bool(bad.any()):
            tiny = torch.finfo(A.dtype).eps ** 0.5
            floor = torch.clamp(1e-6 * a.abs().amax(), min=tiny)
            a = torch.where(bad, torch.maximum(a.abs(), floor), a)
        return g / a.unsqueeze(1)
    A = positive_definite_blocks(A)
    rhs = g.permute(0, 2, 3, 1).unsqueeze(-1)  # [B, H, W, C, 1]
    L = torch.linalg.cholesky(A)
    d = torch.cholesky_solve(rhs, L)
    return d.squeeze(-1).permute(0, 3, 1, 2).contiguous()
