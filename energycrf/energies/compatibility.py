r"""Compatibility transforms :math:`P(c)` of the pairwise term (paper eq. 3, :math:`\mathbf{W}(\mathbf{c})`).

The pairwise energy only needs :math:`M = P(c)^\top P(c)` (``C x C``, positive
semi-definite): ``matrix(c, batch, dtype, device) -> Tensor[B, C, C]``.

- :class:`IdentityCompatibility`: :math:`P = I`;
- :class:`MatrixCompatibility`: a fixed or learnable ``D x C`` matrix;
- :class:`TextCompatibility`: :math:`P(c) = P_0 + \mathrm{reshape}(A\,\bar c)`, conditioned on a
  pooled embedding ``[B, D]`` or on token embeddings ``[B, L, D]`` (mean-pooled).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._validation import check_int

__all__ = ["Compatibility", "IdentityCompatibility", "MatrixCompatibility", "TextCompatibility"]


class Compatibility(nn.Module):
    """Base class: gives the projection ``P(c)`` ``[B, D, C]`` and ``M = P^T P`` ``[B, C, C]``."""

    channels: int
    cond_dim: int | None = None
    requires_condition: bool = False

    def projection(self, c: Tensor | None, batch: int, dtype: torch.dtype, device) -> Tensor:
        raise NotImplementedError

    def matrix(self, c: Tensor | None, batch: int, dtype: torch.dtype, device) -> Tensor:
        r""":math:`M = P(c)^\top P(c)`, ``Tensor[B, C, C]``."""
        p = self.projection(c, batch, dtype, device)
        return p.transpose(-1, -2) @ p


class IdentityCompatibility(Compatibility):
    """:math:`P = I` (every channel compatible with itself only)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = check_int("channels", channels, minimum=1)

    def projection(self, c, batch, dtype, device):
        return torch.eye(self.channels, dtype=dtype, device=device).expand(batch, -1, -1)

    def matrix(self, c, batch, dtype, device):
        return self.projection(c, batch, dtype, device)

    def extra_repr(self):
        return f"channels={self.channels}"


class MatrixCompatibility(Compatibility):
    """A fixed (``learnable=False``) or learnable projection ``P`` of shape ``[D, C]``."""

    def __init__(self, projection: Tensor, learnable: bool = False):
        super().__init__()
        if not isinstance(projection, Tensor) or projection.dim() != 2:
            got = tuple(projection.shape) if isinstance(projection, Tensor) else type(projection).__name__
            raise ValueError(f"projection must be a [D, C] tensor, got {got}")
        if not projection.is_floating_point() or not bool(torch.isfinite(projection).all()):
            raise ValueError("projection must be a finite floating-point tensor")
        self.channels = projection.shape[1]
        self.learnable = bool(learnable)
        if learnable:
            self.weight = nn.Parameter(projection.clone())
        else:
            self.register_buffer("weight", projection.clone())

    def projection(self, c, batch, dtype, device):
        return self.weight.to(dtype=dtype, device=device).expand(batch, -1, -1)

    def extra_repr(self):
        return f"shape={tuple(self.weight.shape)}, learnable={self.learnable}"


class TextCompatibility(Compatibility):
    r"""Text-conditioned :math:`P(c) = P_0 + \mathrm{reshape}_{D \times C}(A \bar c + b)`.

    :math:`\bar c` is the pooled embedding ``[B, D_c]`` or the mean of token embeddings
    ``[B, L, D_c]``. ``A`` starts at zero, so an untrained term is :math:`P_0 = I`.

    Args:
        channels: latent channels ``C``.
        cond_dim: embedding width ``D_c``.
        rank: rows ``D`` of ``P`` (default ``C``).
    """

    requires_condition = True

    def __init__(self, channels: int, cond_dim: int, rank: int | None = None):
        super().__init__()
        self.channels = check_int("channels", channels, minimum=1)
        self.cond_dim = check_int("cond_dim", cond_dim, minimum=1)
        self.rank = channels if rank is None else check_int("rank", rank, minimum=1)
        base = torch.zeros(self.rank, channels)
        base[: min(self.rank, channels), : min(self.rank, channels)] = torch.eye(min(self.rank, channels))
        self.base = nn.Parameter(base)
        self.to_projection = nn.Linear(self.cond_dim, self.rank * channels)
        nn.init.zeros_(self.to_projection.weight)
        nn.init.zeros_(self.to_projection.bias)

    def projection(self, c, batch, dtype, device):
        if c is None:
            raise ValueError(f"TextCompatibility needs c of shape [B, {self.cond_dim}] or [B, L, {self.cond_dim}]")
        pooled = (c.mean(1) if c.dim() == 3 else c).to(dtype)  # e.g. float32 text embeddings, float64 latents
        weight = self.to_projection.weight.to(dtype=dtype, device=device)
        bias = self.to_projection.bias.to(dtype=dtype, device=device)
        delta = (pooled @ weight.T + bias).reshape(batch, self.rank, self.channels)
        return self.base.to(dtype=dtype, device=device) + delta

    def extra_repr(self):
        return f"channels={self.channels}, cond_dim={self.cond_dim}, rank={self.rank}"
