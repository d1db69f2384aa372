"""Coordinate descent never raises the energy: built-in sums and user terms, both orders."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from solver_problems import F64, BoxSmooth, Wobble, foe, pairwise, random_compat

import energycrf as ec


@st.composite
def energies(draw):
    """A random sum of built-in terms (and optionally a user term) with a tiny problem."""
    C = draw(st.integers(1, 3))
    boundary = draw(st.sampled_from(["zeros", "circular"]))
    radius = draw(st.integers(1, 2))
    ks = draw(st.sampled_from([1, 3]))
    user = draw(st.sampled_from([None, "box", "wobble"]))
    # a user term's radius is estimated from Hessian probes, which need room around the centre
    low = 7 if user else max(2 * radius + 1, ks)
    H = draw(st.integers(low, max(low, 7)))
    W = draw(st.integers(low, max(low, 7)))
    seed = draw(st.integers(0, 2**16))
    terms = [ec.energies.Unary(weight=draw(st.sampled_from([0.05, 0.5, 1.0])))]
    if draw(st.booleans()):
        terms.append(pairwise(C, radius, draw(st.sampled_from([0.5, 2.0, 8.0])), boundary, random_compat(C, seed)))
    if draw(st.booleans()):
        pot = draw(st.sampled_from(["relu", "student_t", "charbonnier", "huber"]))
        terms.append(foe(C, num_filters=2, kernel_size=ks, potential=pot, boundary=boundary,
                         scale=draw(st.sampled_from([0.3, 1.5])), seed=seed))
    if user == "box":
        terms.append(BoxSmooth(a=0.7))
    elif user == "wobble":
        terms.append(Wobble(b=1.5))
    E = sum(terms).to(F64)
    g = torch.Generator().manual_seed(seed)
    B = draw(st.integers(1, 2))
    x = torch.randn(B, C, H, W, generator=g, dtype=F64)
    y0 = x + torch.randn(B, C, H, W, generator=g, dtype=F64)
    return E, x, y0


def _assert_non_increasing(energies: torch.Tensor):
    e = energies
    slack = 1e-12 * (1 + e[:-1].abs())
    assert bool((e[1:] <= e[:-1] + slack).all()), (e[1:] - e[:-1]).max()


@given(problem=energies(), order=st.sampled_from(["colour", "sequential"]))
def test_coordinate_descent_never_raises_the_energy(problem, order):
    E, x, y0 = problem
    res = ec.solve(E, x, method="coordinate_descent", order=order, y0=y0, max_iters=3, tol=0.0, gtol=0.0,
                   on_diverge="ignore")
    _assert_non_increasing(res.energies)
    # the recorded energies are the energies of the iterates (not bookkeeping)
    torch.testing.assert_close(res.energies[-1], E(res.y, x), rtol=1e-12, atol=1e-12)


def test_the_safeguard_is_what_keeps_a_user_term_monotone():
    # Wobble's exact Hessian blocks (the fallback curvature) are no majoriser
    C, H, W = 1, 6, 6
    E = (ec.energies.Unary(weight=0.2) + pairwise(C, 1, 1.0) + Wobble(b=3.0)).to(F64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, C, H, W, generator=g, dtype=F64)
    kw = dict(method="coordinate_descent", max_iters=4, tol=0.0, gtol=0.0)
    guarded = ec.solve(E, x, **kw)
    _assert_non_increasing(guarded.energies)
    assert bool((guarded.energies[-1] < guarded.energies[0] - 1.0).all())  # real progress
    raw = ec.solve(E, x, safeguard=False, on_diverge="ignore", rise_tol=float("inf"), **kw)
    assert bool(((raw.energies[1:] - raw.energies[:-1]) > 1.0).any())  # without it the energy rises
