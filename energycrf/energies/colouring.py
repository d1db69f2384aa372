"""Colour classes: sets of sites that share no energy term.

Sites farther apart than the interaction radius ``r`` (Chebyshev distance) never share a
term, so a lattice of stride ``t = r + 1`` gives ``t^2`` classes; with a circular boundary
and ``H`` or ``W`` not a multiple of ``t``, :func:`axis_colouring` uses blocks of length
``t`` or more so wrapped neighbours never share a colour. Used by the curvature fallback
(Hessian probes) and by exact coordinate descent.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["axis_colouring", "colour_classes"]


def axis_colouring(n: int, t: int, periodic: bool) -> tuple[Tensor, int]:
    """Colour ``n`` positions on a line (or a cycle) so that positions at distance ``< t``
    get different colours. Returns ``(colours [n] int64, number of colours)``.

    Open line: ``p mod t`` (``t`` colours). Cycle: ``q = n // t`` blocks of near-equal
    length ``>= t``, colour = position inside the block (``ceil(n / q)`` colours, ``t``
    when ``t`` divides ``n``); equal colours in different blocks are ``>= t`` apart both
    ways round. When ``n < 2t`` on a cycle every position gets its own colour.
    """
    if t < 1:
        raise ValueError(f"t: expected a stride >= 1, got {t}")
    pos = torch.arange(n)
    if not periodic:
        k = min(t, n)
        return pos % t, k
    q = n // t
    if q < 2:
        return pos, n
    base, extra = divmod(n, q)  # the first `extra` blocks are one longer
    lengths = torch.full((q,), base, dtype=torch.long)
    lengths[:extra] += 1
    starts = torch.cumsum(lengths, 0) - lengths
    block = torch.repeat_interleave(torch.arange(q), lengths)
    return pos - starts[block], int(lengths.max())


def colour_classes(H: int, W: int, radius: int, periodic: bool, device=None) -> list[Tensor]:
    """Boolean masks ``[H, W]``, one per colour class, of sites that never interact.

    Two sites in one class differ by at least ``radius + 1`` along one axis (circularly
    when ``periodic``), so their Chebyshev distance exceeds ``radius``.
    """
    if not isinstance(radius, int) or isinstance(radius, bool) or radius < 0:
        raise ValueError(f"radius: expected a non-negative int, got {radius!r}")
    t = radius + 1
    ch, nh = axis_colouring(H, t, periodic)
    cw, nw = axis_colouring(W, t, periodic)
    label = ch[:, None] * nw + cw[None, :]
    masks = [label == k for k in range(nh * nw)]
    return [m.to(device) for m in masks if bool(m.any())]
