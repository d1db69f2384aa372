"""Update rules against explicit matrices, and every method against the exact minimiser."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from solver_problems import (
    F64,
    BoxSmooth,
    autograd_grad,
    convex_energy,
    exact_quadratic_minimiser,
    explicit_hessian,
    foe,
    pairwise,
    quadratic_energy,
    random_compat,
)

import energycrf as ec
from energycrf.energies import colour_classes


def _site_index(mask: torch.Tensor, C: int) -> torch.Tensor:
    """Flat indices (row-major ``c, h, w``) of all channels of the sites in ``mask``."""
    HW = mask.numel()
    sites = torch.nonzero(mask.flatten()).flatten()
    return torch.cat([c * HW + sites for c in range(C)])


def _tiny_quadratic(kind: str, boundary: str, C: int = 2, H: int = 5, W: int = 5):
    if kind == "builtin":
        E = quadratic_energy(C, radius=1, strength=2.0, boundary=boundary)
    else:  # a user term: fallback gradient, curvature and estimated radius (2 here)
        E = (ec.energies.Unary(weight=1.0) + BoxSmooth(a=0.3)).to(F64)
        H, W = H + 1, W + 2  # the radius estimate needs room around the image centre
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, C, H, W, generator=g, dtype=F64)
    y0 = x + torch.randn(1, C, H, W, generator=g, dtype=F64)
    return E, x, y0


def _explicit(E, x):
    H = explicit_hessian(E, torch.zeros_like(x), x)
    g0 = autograd_grad(E, torch.zeros_like(x), x).flatten()
    return H, g0


@st.composite
def tiny_quadratics(draw):
    """Unary + Pairwise with random sizes, radius, boundary, compatibility; or Unary + a user term."""
    kind = draw(st.sampled_from(["builtin", "builtin", "user"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if kind == "builtin":
        C, r = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        boundary = draw(st.sampled_from(["zeros", "circular"]))
        lo = 2 * r + 1 if boundary == "circular" else 2
        H, W = draw(st.integers(lo, 7)), draw(st.integers(lo, 7))
        E = quadratic_energy(C, radius=r, strength=draw(st.sampled_from([0.5, 2.0, 6.0])), boundary=boundary,
                             weight=draw(st.sampled_from([0.1, 1.0])), seed=seed)
    else:  # a user term: fallback gradient, curvature and estimated radius (2)
        C, H, W = 1, draw(st.integers(7, 8)), draw(st.integers(7, 9))
        E = (ec.energies.Unary(weight=1.0) + BoxSmooth(a=0.3)).to(F64)
    x = torch.randn(1, C, H, W, generator=g, dtype=F64)
    y0 = x + torch.randn(1, C, H, W, generator=g, dtype=F64)
    return E, x, y0


@given(problem=tiny_quadratics())
def test_colour_class_sweeps_are_block_gauss_seidel(problem):
    E, x, y0 = problem
    _, C, Hh, Ww = x.shape
    Hm, g0 = _explicit(E, x)
    radius = E.resolve_interaction_radius(y0, x)
    masks = colour_classes(Hh, Ww, radius, bool(E.periodic))
    y = y0.flatten().clone()
    for _ in range(2):
        for mask in masks:
            S = _site_index(mask, C)
            H_SS = Hm[S][:, S]
            # sites of one class share no term: H_SS is block diagonal (only C x C site blocks)
            same_site = (S[:, None] % (Hh * Ww)) == (S[None, :] % (Hh * Ww))
            off = H_SS[~same_site]
            assert off.numel() == 0 or float(off.abs().max()) < 1e-12
            g = Hm @ y + g0
            y[S] = y[S] - torch.linalg.solve(H_SS, g[S])
    res = ec.solve(E, x, method="coordinate_descent", y0=y0, max_iters=2, tol=0.0, gtol=0.0)
    torch.testing.assert_close(res.y.flatten(), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["builtin", "user"])
def test_sequential_order_is_point_gauss_seidel(kind):
    E, x, y0 = _tiny_quadratic(kind, "zeros", C=2, H=4, W=4)
    _, C, Hh, Ww = x.shape
    Hm, g0 = _explicit(E, x)
    y = y0.flatten().clone()
    for site in range(Hh * Ww):  # raster order
        S = torch.tensor([c * Hh * Ww + site for c in range(C)])
        g = Hm @ y + g0
        y[S] = y[S] - torch.linalg.solve(Hm[S][:, S], g[S])
    res = ec.solve(E, x, method="sequential", y0=y0, max_iters=1, tol=0.0, gtol=0.0)
    torch.testing.assert_close(res.y.flatten(), y, rtol=1e-10, atol=1e-10)


@given(problem=tiny_quadratics(), damping=st.sampled_from([1.0, 0.6, 0.25]))
def test_mean_field_is_damped_block_jacobi(problem, damping):
    E, x, y0 = problem
    _, C, Hh, Ww = x.shape
    n = Hh * Ww
    Hm, g0 = _explicit(E, x)
    # D: the C x C diagonal blocks of the Hessian, one per site
    idx = torch.arange(n)[:, None] + n * torch.arange(C)[None, :]  # [n, C]
    D = torch.zeros_like(Hm)
    for i in range(n):
        D[idx[i][:, None], idx[i][None, :]] = Hm[idx[i]][:, idx[i]]
    y = y0.flatten().clone()
    for _ in range(3):
        y = y - damping * torch.linalg.solve(D, Hm @ y + g0)
    res = ec.solve(E, x, method="mean_field", damping=damping, y0=y0, max_iters=3, tol=0.0, gtol=0.0,
                   on_diverge="ignore")
    torch.testing.assert_close(res.y.flatten(), y, rtol=1e-10, atol=1e-10)


def test_one_mean_field_step_is_the_papers_eq_9():
    """With w = 1 and the paper's ReLU expert: y_i = K^-1 (x_i + M (W^s y)_i + xi_HO(y)_i), K = I + d_i M."""
    C, Hh, Ww = 3, 6, 7
    Ep = pairwise(C, radius=1, strength=1.5, compat=random_compat(C, 2))
    Ef = foe(C, num_filters=4, kernel_size=3, potential="relu", scale=0.3, seed=2)
    E = (ec.energies.Unary(weight=1.0) + Ep + Ef).to(F64)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, C, Hh, Ww, generator=g, dtype=F64)
    y = x + 0.5 * torch.randn(2, C, Hh, Ww, generator=g, dtype=F64)
    M = Ep.compatibility_matrix(None, 2, F64, x.device)  # [B, C, C]
    d = Ep.degree(Hh, Ww, F64, x.device)  # [H, W]
    rhs = x + torch.einsum("bcd,bdhw->bchw", M, Ep.message(y)) + Ef.score(y)
    K = torch.eye(C, dtype=F64) + d[None, :, :, None, None] * M[:, None, None]
    expected = torch.linalg.solve(K, rhs.permute(0, 2, 3, 1).unsqueeze(-1)).squeeze(-1).permute(0, 3, 1, 2)
    res = ec.solve(E, x, method="mean_field", y0=y, max_iters=1, tol=0.0, gtol=0.0)
    torch.testing.assert_close(res.y, expected, rtol=1e-12, atol=1e-12)


# every registered method; those that minimise non-quadratic energies too, as each solver says (it
# refuses a convex non-quadratic energy, or not: energycrf.testing.solver_traits)
ALL_METHODS = ec.solvers.method_names()
GENERAL_METHODS = [m for m in ALL_METHODS if not ec.testing.solver_traits(m).quadratic_only]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_reaches_the_exact_quadratic_minimiser(method):
    E = quadratic_energy(2, radius=1, strength=1.0, boundary="circular", seed=5)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=F64)
    y_star = exact_quadratic_minimiser(E, x)
    res = ec.solve(E, x, method=method, max_iters=3000, tol=1e-15, gtol=1e-11)
    assert res.status == ["converged", "converged"], res.summary()
    torch.testing.assert_close(res.y, y_star, rtol=1e-7, atol=1e-7)
    g_auto = autograd_grad(E, res.y, x)
    assert float(g_auto.norm()) <= 1e-6 * float(autograd_grad(E, x + 1, x).norm())


def test_fft_and_cg_solve_a_long_range_kernel_exactly():
    """The FFT long-range kernel couples every site: colours cannot split it, FFT/CG are exact."""
    C = 2
    kernel = ec.energies.LongRangeKernel(sigma=2.0, weight=0.2, boundary="circular")
    E = (ec.energies.Unary(weight=0.5) + ec.energies.Pairwise(channels=C, kernel=kernel,
                                                               compatibility=random_compat(C, 7))).to(F64)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, C, 6, 5, generator=g, dtype=F64)
    y_star = exact_quadratic_minimiser(E, x)
    fft = ec.solve(E, x, method="fft")
    assert fft.status == ["converged"] and fft.num_iterations == 1
    torch.testing.assert_close(fft.y, y_star, rtol=1e-10, atol=1e-10)
    cg = ec.solve(E, x, method="conjugate_gradient", tol=1e-15, gtol=1e-12, max_iters=200)
    torch.testing.assert_close(cg.y, y_star, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="mean_field"):
        ec.solve(E, x, method="coordinate_descent")


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_every_method_reaches_the_reference_minimum_of_a_convex_non_quadratic_energy(method):
    E = convex_energy(2, seed=3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 5, 5, generator=g, dtype=F64)
    ref = ec.solve(E, x, method="scipy_lbfgs", max_iters=2000, tol=1e-16, gtol=1e-13)
    g_ref = autograd_grad(E, ref.y, x)
    assert float(g_ref.norm()) < 1e-7  # the reference is tightly converged
    res = ec.solve(E, x, method=method, max_iters=3000, tol=1e-15, gtol=1e-11)
    assert all(s == "converged" for s in res.status), res.summary()
    torch.testing.assert_close(res.y, ref.y, rtol=1e-6, atol=1e-6)
    assert float(autograd_grad(E, res.y, x).norm()) < 1e-6
    if ec.solvers.SOLVERS[method].monotone:
        e = res.energies
        assert bool((e[1:] <= e[:-1] + 1e-12 * e[:-1].abs()).all())  # monotone methods


def test_fft_preconditioned_cg_is_exact_in_one_step_on_a_circular_energy():
    E = quadratic_energy(2, radius=1, strength=4.0, boundary="circular", seed=8)
    x = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(8), dtype=F64)
    res = ec.solve(E, x, method="conjugate_gradient", precondition="fft", max_iters=5, tol=0.0, gtol=1e-10)
    assert res.num_iterations == 1
    torch.testing.assert_close(res.y, exact_quadratic_minimiser(E, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_every_method_solves_user_terms_through_the_fallbacks(method):
    """Terms that give only ``energy``: gradient, curvature and radius come from the fallbacks."""
    from solver_problems import Wobble

    E = (ec.energies.Unary(weight=1.0) + BoxSmooth(a=0.4) + Wobble(b=0.05)).to(F64)
    x = torch.randn(2, 1, 7, 8, generator=torch.Generator().manual_seed(9), dtype=F64)
    options = {"adaptive": True} if method == "mean_field" else {}  # undamped Jacobi diverges here
    res = ec.solve(E, x, method=method, max_iters=3000, tol=0.0, gtol=1e-9, on_diverge="ignore", **options)
    # line searches stop at the round-off floor of the energy: torch's reports that as stalled
    allowed = {"converged", "stalled"} if method == "torch_lbfgs" else {"converged"}
    assert set(res.status) <= allowed, res.summary()
    g0 = float(autograd_grad(E, x, x).norm())
    assert float(autograd_grad(E, res.y, x).norm()) <= 1e-6 * g0
