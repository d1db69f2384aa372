"""Colour classes: sites of one class never interact, also across a circular boundary."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from energycrf.energies import axis_colouring, colour_classes


def _dist(a: int, b: int, n: int, periodic: bool) -> int:
    d = abs(a - b)
    return min(d, n - d) if periodic else d


@given(n=st.integers(1, 40), t=st.integers(1, 9), periodic=st.booleans())
def test_axis_colouring_separates_positions_closer_than_t(n, t, periodic):
    colours, k = axis_colouring(n, t, periodic)
    assert colours.shape == (n,) and int(colours.max()) < k and int(colours.min()) >= 0
    for a in range(n):
        for b in range(a + 1, n):
            if colours[a] == colours[b]:
                assert _dist(a, b, n, periodic) >= t
    if not periodic or n % t == 0:
        assert k == min(t, n)  # the plain stride-t lattice
    elif n >= 2 * t:
        assert k <= t + (t - 1) // 2 + 1  # blocks of length >= t: few extra colours


@given(H=st.integers(1, 12), W=st.integers(1, 12), r=st.integers(0, 4), periodic=st.booleans())
def test_colour_classes_partition_sites_into_non_interacting_sets(H, W, r, periodic):
    masks = colour_classes(H, W, r, periodic)
    cover = torch.stack(masks).sum(0)
    assert torch.equal(cover, torch.ones(H, W, dtype=cover.dtype))  # each site in exactly one class
    for m in masks:
        sites = torch.nonzero(m).tolist()
        for i, (h1, w1) in enumerate(sites):
            for h2, w2 in sites[i + 1 :]:
                cheb = max(_dist(h1, h2, H, periodic), _dist(w1, w2, W, periodic))
                assert cheb > r


def test_periodic_colouring_uses_fewer_classes_than_a_remainder_stripe():
    # 64 = 12 * 5 + 4: blocks of 5 or 6 -> 6 colours per axis (36 classes), not 9 x 9
    assert len(colour_classes(64, 64, 4, periodic=True)) == 36
    assert len(colour_classes(64, 64, 4, periodic=False)) == 25
