"""Hypothesis strategies for energy tests: shapes, conditions, parameters and whole cases.

Shapes include ``1 x 1`` images, odd and non-square sizes, and batch and channel counts
from 1 up. Conditions are ``None``, pooled ``[B, D]`` or tokens ``[B, L, D]``, one per
sample. Requires ``hypothesis`` (the ``test`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hypothesis import strategies as st

from .cases import CONDITION_KINDS, Case

__all__ = [
    "shapes",
    "condition_kinds",
    "positive_floats",
    "odd_kernel_sizes",
    "cases",
    "tensors",
]


def shapes(
    *, max_batch: int = 3, max_channels: int = 4, min_size: int = 1, max_size: int = 7,
    channels: int | None = None,
) -> st.SearchStrategy[tuple[int, int, int, int]]:
    """``(B, C, H, W)`` with ``1 <= B <= max_batch``, ``C`` fixed or in ``1..max_channels``,
    ``min_size <= H, W <= max_size`` (independently: non-square and 1x1 included)."""
    c = st.just(channels) if channels is not None else st.integers(1, max_channels)
    size = st.integers(min_size, max_size)
    return st.tuples(st.integers(1, max_batch), c, size, size)


def condition_kinds(kinds: Sequence[str | None] = CONDITION_KINDS) -> st.SearchStrategy[str | None]:
    """One of ``None`` (no condition), ``"pooled"`` (``[B, D]``), ``"tokens"`` (``[B, L, D]``)."""
    return st.sampled_from(tuple(kinds))


def positive_floats(low: float = 0.1, high: float = 4.0) -> st.SearchStrategy[float]:
    """Finite floats in ``[low, high]`` (weights, scales, widths)."""
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


def odd_kernel_sizes(max_size: int = 5) -> st.SearchStrategy[int]:
    """Odd window sizes ``1, 3, ..., max_size``."""
    return st.sampled_from(tuple(range(1, max_size + 1, 2)))


@st.composite
def cases(
    draw,
    *,
    channels: int | None = None,
    max_channels: int = 4,
    max_batch: int = 3,
    min_size: int = 1,
    max_size: int = 7,
    conditions: Sequence[str | None] = CONDITION_KINDS,
    max_cond_dim: int = 6,
    max_tokens: int = 4,
    dtype: torch.dtype = torch.float64,
) -> Case:
    """A whole :class:`~energycrf.testing.Case`: shape, condition kind and size, seed."""
    B, C, H, W = draw(shapes(max_batch=max_batch, max_channels=max_channels, min_size=min_size,
                             max_size=max_size, channels=channels))
    return Case(
        batch=B,
        channels=C,
        height=H,
        width=W,
        condition=draw(condition_kinds(conditions)),
        cond_dim=draw(st.integers(1, max_cond_dim)),
        tokens=draw(st.integers(1, max_tokens)),
        seed=draw(st.integers(0, 2**20)),
        scale=draw(st.sampled_from((0.5, 1.0, 2.0))),
        dtype=dtype,
    )


@st.composite
def tensors(draw, shape: Sequence[int], *, scale: float = 1.0, dtype: torch.dtype = torch.float64):
    """A standard normal tensor of ``shape`` times ``scale``, seeded by hypothesis."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return scale * torch.randn(tuple(shape), generator=g, dtype=dtype)
