"""L-BFGS with fused evaluations and the boundary-refined FFT preconditioner: the
preconditioner's taps from a crop equal those of the full image, the refined operator is
the Richardson polynomial (symmetric positive definite), and the solver still reaches the
reference minimum with one fused evaluation per accepted iteration."""

from __future__ import annotations

import contextlib
import dataclasses
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.solvers.base import Problem
from energycrf.solvers import host as host_module
from energycrf.solvers.lbfgs import LBFGS, LBFGSState
from energycrf.energies.operators import window_spectrum
from energycrf.solvers.preconditioners.spectral import SpectralPreconditioner, _floor, _floored_inverse, _place_taps
from energycrf.solvers.quadratic_part import quadratic_part
from solver_problems import (SiteWeightedUnary, dense_operator, exact_quadratic_minimiser, explicit_hessian,
                             spectral_case)

K = ec.energies
F64 = torch.float64


def all_accepted(out) -> bool:
    """Every sample's step accepted: ``accepted`` is None (all) or a mask (a tensor or host array)."""
    return out.accepted is None or bool(np.asarray(out.accepted).all())


def _dense_hessian(E, x, c=None):
    """The first sample's Hessian from torch.func on the energy (independent of the analytic products)."""
    return explicit_hessian(E, torch.zeros_like(x), x, c)


@pytest.mark.parametrize("kind", ["zeros", "circular", "matrix", "text"])
def test_crop_taps_equal_full_image_taps(kind):
    E = spectral_case(kind).double()
    if kind == "text":
        with torch.no_grad():
            E[1].compatibility.to_projection.weight.normal_()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 11, 9, generator=g, dtype=F64)
    c = torch.randn(2, 3, generator=g, dtype=F64) if kind == "text" else None
    P = SpectralPreconditioner(E, x, c, x)
    # the full-image impulse response (the reference path) by an energy that declares no radius
    full = ec.energies.SumEnergy(list(E.terms))
    full._declares_radius = lambda: False
    Pf = SpectralPreconditioner(full, x, c, x)
    v = torch.randn(x.shape, generator=g, dtype=F64)
    torch.testing.assert_close(P(v), Pf(v), rtol=1e-10, atol=1e-12)
    assert P.diagonal == (kind in ("zeros", "circular"))
    if kind == "circular":  # exact inverse Hessian for a circular quadratic
        H = _dense_hessian(E, x[:1], None if c is None else c[:1])
        torch.testing.assert_close(P(v[:1]).reshape(-1), torch.linalg.solve(H, v[:1].reshape(-1)),
                                   rtol=1e-9, atol=1e-10)


@given(radius=st.integers(0, 3), extra_h=st.integers(0, 9), extra_w=st.integers(0, 9), lead=st.integers(1, 3),
       dtype=st.sampled_from([torch.float32, F64]), seed=st.integers(0, 2**16))
def test_spectrum_of_a_crop_is_the_fft_of_the_placed_taps(radius, extra_h, extra_w, lead, dtype, seed):
    """The small-DFT spectrum of ``s x s`` taps equals ``rfft2`` of the taps placed on the
    ``H x W`` grid (centre at the origin), for any ``H, W >= s``, odd or even; with ``real``,
    its real part."""
    s = 2 * radius + 1
    H, W = s + extra_h, s + extra_w
    small = torch.randn(lead, 2, s, s, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    expected = torch.fft.rfft2(_place_taps(small, H, W))
    got = window_spectrum(small, H, W)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    tol = 1e-12 if dtype == F64 else 2e-5
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    real = window_spectrum(small, H, W, real=True)  # the real part by cosine and sine factors
    assert real.dtype == dtype and real.is_contiguous()
    torch.testing.assert_close(real, expected.real, rtol=tol, atol=tol)


def test_a_site_dependent_quadratic_term_takes_the_full_image_impulse_not_a_corner_crop():
    """A quadratic term that declares its radius but whose Hessian depends on the site (not
    translation invariant): its taps come from the image centre, as for a term that declares
    no radius (a top-left crop would read the corner's weights, or fail on the weight map's
    shape), and the FFT-preconditioned L-BFGS from the quadratic start reaches the exact
    minimiser."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 7, 6, generator=g, dtype=F64)
    E = (SiteWeightedUnary(7, 6) + K.Pairwise(channels=2)).double()
    assert E._declares_radius() and not E.translation_invariant
    P = SpectralPreconditioner(E, x, None, x, refine=1)
    full = ec.energies.SumEnergy(list(E.terms))
    full._declares_radius = lambda: False
    v = torch.randn(x.shape, generator=g, dtype=F64)
    torch.testing.assert_close(P(v), SpectralPreconditioner(full, x, None, x, refine=1)(v), rtol=1e-12, atol=1e-12)
    res = ec.solve(E, x, method="lbfgs", precondition="fft", y0="quadratic", max_iters=50, tol=0.0, gtol=1e-11)
    torch.testing.assert_close(res.y, exact_quadratic_minimiser(E, x), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("seed", [10, 12, 21])
def test_refined_preconditioner_stays_definite_where_the_circulant_does_not_bound_the_hessian(seed):
    """A DenseKernel pairwise term (not translation invariant): P0 H_q has eigenvalues above 2
    for these seeds, where one Richardson step would make P indefinite. The odd count is
    lowered to an even one there (kept for translation-invariant parts), so P stays positive
    definite, and L-BFGS with it reaches the exact minimiser."""
    g = torch.Generator().manual_seed(seed)
    n = 36
    A = torch.rand(n, n, generator=g, dtype=F64)
    A = 0.5 * (A + A.T)
    A.fill_diagonal_(0)
    A = A * (torch.rand(n, n, generator=g, dtype=F64) < 0.3).double()
    A = torch.maximum(A, A.T)
    E = (K.Unary() + K.Pairwise(channels=1, kernel=K.DenseKernel(A))).double()
    x = torch.randn(1, 1, 6, 6, generator=g, dtype=F64)
    P0 = SpectralPreconditioner(E, x, None, x)

    def dense(op):
        return dense_operator(op, x)

    H = _dense_hessian(E, x)
    mu = torch.linalg.eigvals(dense(P0) @ H).real
    assert float(mu.max()) > 2  # the case the rule is for
    P1 = P0.with_refine(1)
    assert P1.refine == 0 and P0.with_refine(2).refine == 2 and P0.with_refine(3).refine == 2
    assert float(torch.linalg.eigvalsh(0.5 * (dense(P1) + dense(P1).T)).min()) > 0
    # one step as asked would have been indefinite: the rule is needed here
    assert float(torch.linalg.eigvalsh(0.5 * (dense(lambda v: P0(v, refine=1)) + dense(lambda v: P0(v, refine=1)).T)).min()) < 0
    # a translation-invariant part keeps the odd count
    assert SpectralPreconditioner(spectral_case("zeros").double(), x.expand(1, 2, 6, 6).contiguous(), None,
                                  x.expand(1, 2, 6, 6).contiguous()).with_refine(1).refine == 1
    res = ec.solve(E, x, method="lbfgs", precondition="fft", refine=1, max_iters=200, tol=0.0, gtol=1e-14)
    assert res.status == ["converged"], res.reason
    # it stops when the float64 energy stops changing: y is then known to about sqrt(eps)
    y_star = exact_quadratic_minimiser(E, x)
    torch.testing.assert_close(res.y, y_star, rtol=0, atol=1e-7)
    assert float(E(res.y, x) - E(y_star, x)) <= 1e-13 * float(E(y_star, x).abs())


@given(channels=st.integers(1, 4), blocks=st.integers(2, 6), smallest=st.sampled_from([1.0, 1e-3, 1e-14, 0.0, -0.5]),
       seed=st.integers(0, 2**16))
def test_floored_inverse_matches_the_clamped_eigendecomposition(channels, blocks, smallest, seed):
    """Per-frequency C x C inverse: the Cholesky shortcut (every eigenvalue provably above the floor)
    and the eigendecomposition fallback both give V diag(1 / max(lam, floor)) V^H, and report
    positive definiteness exactly when the smallest eigenvalue is above the floor."""
    g = torch.Generator().manual_seed(seed)
    C128 = torch.complex128
    A = torch.complex(torch.randn(blocks, channels, channels, generator=g, dtype=F64),
                      torch.randn(blocks, channels, channels, generator=g, dtype=F64))
    V, _ = torch.linalg.qr(A)
    lam = 1.0 + torch.rand(blocks, channels, generator=g, dtype=F64)
    lam[0, 0] = smallest  # one block carries the drawn smallest eigenvalue, the others set the scale
    K = (V * lam.to(C128).unsqueeze(-2)) @ V.conj().transpose(-1, -2)
    K = 0.5 * (K + K.conj().transpose(-1, -2))
    pd, Kinv = _floored_inverse(K)
    floor = _floor(lam)
    assert pd == bool(lam.amin() > floor)
    want = (V / lam.clamp_min(floor).to(C128).unsqueeze(-2)) @ V.conj().transpose(-1, -2)
    torch.testing.assert_close(Kinv, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


@pytest.mark.parametrize("refine", [0, 1, 2, 3])
def test_refined_preconditioner_is_the_richardson_polynomial_and_spd(refine):
    E = spectral_case("zeros").double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 7, 6, generator=g, dtype=F64)
    P = SpectralPreconditioner(E, x, None, x, refine=refine)
    n = x.numel()
    eye = torch.eye(n, dtype=F64)
    P0 = dense_operator(P.apply_circulant, x)
    H = _dense_hessian(E, x)
    expected = sum(torch.linalg.matrix_power(eye - P0 @ H, i) for i in range(refine + 1)) @ P0
    Pm = dense_operator(P, x)
    torch.testing.assert_close(Pm, expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(Pm, Pm.T, rtol=1e-9, atol=1e-10)
    assert float(torch.linalg.eigvalsh(0.5 * (Pm + Pm.T)).min()) > 0
    # eigenvalues of P0 H in (0, 1] (H <= circulant), so every refinement gets closer to H^-1
    lam = torch.linalg.eigvals(P0 @ H).real
    assert float(lam.min()) > 0 and float(lam.max()) <= 1 + 1e-9
    if refine:
        err = torch.linalg.matrix_norm(Pm @ H - eye, 2)
        err0 = torch.linalg.matrix_norm(P0 @ H - eye, 2)
        assert err < err0


def test_fft_lbfgs_reaches_the_reference_minimum_with_fused_evaluations():
    torch.manual_seed(0)
    E = (K.Unary() + K.Pairwise(channels=2) + K.FieldOfExperts(channels=2, num_filters=4, kernel_size=5)).double()
    x = torch.randn(3, 2, 24, 20, dtype=F64)
    ref = ec.solve(E, x, method="scipy_lbfgs", max_iters=500, tol=1e-15, gtol=1e-12)
    for refine in (0, 1, 2):
        res = ec.solve(E, x, method="lbfgs", precondition="fft", refine=refine, max_iters=100, tol=1e-14, gtol=1e-10)
        assert all(s == "converged" for s in res.status)
        torch.testing.assert_close(res.energies[-1], ref.energies[-1], rtol=1e-9, atol=1e-9)
        assert res.evaluations["energy_and_grad"] >= res.iterations.max() + 1  # the start and every trial
        assert res.evaluations["grad"] <= res.evaluations["energy"]  # gradients only after backtracking
        assert res.energies.shape == (int(res.iterations.max()) + 1, 3)
    # the boundary refinement saves iterations on a zero-boundary energy
    n0 = ec.solve(E, x, method="lbfgs", precondition="fft", refine=0, max_iters=100, tol=1e-14, gtol=1e-10)
    n2 = ec.solve(E, x, method="lbfgs", precondition="fft", refine=2, max_iters=100, tol=1e-14, gtol=1e-10)
    assert int(n2.iterations.max()) < int(n0.iterations.max())


def test_problem_energy_and_grad_falls_back_for_duck_typed_energies():
    class Duck:
        def __call__(self, y, x, c=None):
            return ((y - x) ** 2).sum((1, 2, 3))

        def grad(self, y, x, c=None):
            return 2 * (y - x)

    x = torch.randn(2, 1, 4, 4)
    prob = Problem(Duck(), x)
    e, g = prob.energy_and_grad(x + 1)
    torch.testing.assert_close(e, torch.full((2,), 16.0))
    torch.testing.assert_close(g, torch.full_like(x, 2.0))
    assert prob.counts["energy"] == 1 and prob.counts["grad"] == 1
    res = ec.solve(Duck(), x + 1, method="lbfgs", precondition="none", max_iters=20)
    assert all(s == "converged" for s in res.status)


def test_refine_is_validated():
    with pytest.raises(ValueError, match="refine"):
        ec.solve(K.Unary(), torch.zeros(1, 1, 4, 4), method="lbfgs", refine=-1)
    assert quadratic_part(K.FieldOfExperts(channels=1)) is None


def test_problem_subclass_overrides_are_kept_by_fused_evaluations():
    """A Problem subclass that evaluates its own way (e.g. keeping the autograd graph, as the
    unrolled layer does) is not bypassed by energy_and_grad."""

    class Graph(Problem):
        def energy(self, y):
            self.counts["energy"] += 1
            return self.E(y, self.x, self.c)

        def grad(self, y):
            self.counts["grad"] += 1
            return self.E.grad(y, self.x, self.c)

    E = K.Unary(learnable=True) + K.FieldOfExperts(channels=1, num_filters=2, kernel_size=3)
    x = torch.randn(1, 1, 6, 6)
    prob = Graph(E, x)
    e, g = prob.energy_and_grad(x + 0.1)
    assert e.requires_grad and g.requires_grad
    assert prob.counts["energy"] == 1 and prob.counts["grad"] == 1 and "energy_and_grad" not in prob.counts


@given(kind=st.sampled_from(["zeros", "matrix", "text"]), radius=st.integers(1, 2), refine=st.integers(1, 2),
       height=st.integers(4, 13), width=st.integers(4, 13), seed=st.integers(0, 2**16))
def test_frame_residual_equals_the_full_residual(kind, radius, refine, height, width, seed):
    """Translation-invariant quadratic parts: the residual taken on the border strips gives
    the same preconditioner as the residual of the whole image (float64)."""
    g = torch.Generator().manual_seed(seed)
    weights = {"zeros": [1.0, 0.5], "matrix": 1.0, "text": 1.0}[kind]
    compat = {"zeros": "identity", "matrix": torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "text": "text"}[kind]
    kernel = K.LocalKernel(radius=radius, learnable=True)
    E = (K.Unary(weight=weights) + K.Pairwise(channels=2, kernel=kernel, compatibility=compat,
                                              cond_dim=3 if kind == "text" else None)).double()
    with torch.no_grad():
        for p in E.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
    H, W = max(height, 2 * radius + 1), max(width, 2 * radius + 1)
    x = torch.randn(2, 2, H, W, generator=g, dtype=F64)
    c = torch.randn(2, 3, generator=g, dtype=F64) if kind == "text" else None
    framed = SpectralPreconditioner(E, x, c, x, refine=refine, frame=True)
    whole = SpectralPreconditioner(E, x, c, x, refine=refine, frame=False)
    assert framed.frame == radius and whole.frame is None
    v = torch.randn(x.shape, generator=g, dtype=F64)
    z = framed.apply_circulant(v)
    # the property it rests on: the whole-image residual vanishes more than R from the border
    full = whole._residual(v, z)
    torch.testing.assert_close(full[..., radius:H - radius, radius:W - radius],
                               torch.zeros_like(full[..., radius:H - radius, radius:W - radius]), rtol=0, atol=1e-12)
    torch.testing.assert_close(framed._residual(v, z), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(framed(v), whole(v), rtol=1e-11, atol=1e-12)


def test_frame_is_automatic_on_large_images_and_refused_where_it_cannot_apply():
    E = spectral_case("zeros")
    small, large = torch.randn(1, 2, 64, 64), torch.randn(1, 2, 160, 160)
    assert SpectralPreconditioner(E, small, None, small, refine=1).frame is None  # strips: a quarter of the sites
    assert SpectralPreconditioner(E, large, None, large, refine=1).frame == 2
    dense = K.Unary() + K.Pairwise(channels=1, kernel=K.DenseKernel(K.LocalKernel(radius=1).dense(6, 6).float()))
    x6 = torch.randn(1, 1, 6, 6)
    cases = [
        (dense, x6, "not translation_invariant|no finite interaction radius"),
        (spectral_case("circular"), torch.randn(1, 2, 8, 8), "periodic"),
        (E, torch.randn(1, 2, 4, 8), r"2R \+ 1 <= H, W \(image 4 x 8\)"),
    ]
    for energy, x, match in cases:
        with pytest.raises(ValueError, match=match):
            SpectralPreconditioner(energy, x, None, x, refine=1, frame=True)
        assert SpectralPreconditioner(energy, x, None, x, refine=1).frame is None
    with pytest.raises(ValueError, match="frame: expected None"):
        SpectralPreconditioner(E, small, None, small, frame="yes")


def test_translation_invariant_flags():
    assert K.Unary().translation_invariant and K.Pairwise(channels=2).translation_invariant
    assert (2.0 * (K.Unary() + K.Pairwise(channels=2))).translation_invariant
    assert not K.Pairwise(channels=1, kernel=K.DenseKernel(1 - torch.eye(4))).translation_invariant
    assert K.Pairwise(channels=1, kernel=K.LongRangeKernel()).translation_invariant  # circular
    assert not K.Pairwise(channels=1, kernel=K.LongRangeKernel(boundary="zeros")).translation_invariant
    assert not (K.Unary() + K.FieldOfExperts(channels=1)).translation_invariant


@pytest.mark.parametrize("compatibility", [None, torch.tensor([[1.0, 0.5], [0.0, 1.0]])])
def test_fft_preconditioner_of_a_singular_quadratic_part_is_floored_not_inverted(compatibility):
    """A Pairwise term alone (constants cost nothing) has a zero at DC: the operator stays finite
    and positive definite (its zeros floored) and says so, and L-BFGS with precondition="fft"
    falls back to the block preconditioner (before, the C x C path raised torch's LinAlgError)."""
    from solver_problems import foe

    E = K.Pairwise(channels=2, compatibility=compatibility).double() + foe(channels=2, potential="charbonnier").double()
    x = torch.randn(2, 2, 9, 8, generator=torch.Generator().manual_seed(3), dtype=F64)
    P = SpectralPreconditioner(quadratic_part(E), x, None, x)
    assert not P.positive_definite
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    Pv = P(v)
    assert torch.isfinite(Pv).all() and bool((ec.solvers.base.sample_dot(v, Pv) > 0).all())
    fft = ec.solve(E, x, method="lbfgs", precondition="fft", max_iters=500, tol=1e-15, gtol=1e-10)
    blocks = ec.solve(E, x, method="lbfgs", precondition="blocks", max_iters=500, tol=1e-15, gtol=1e-10)
    assert fft.status == ["converged", "converged"]
    torch.testing.assert_close(fft.energies, blocks.energies, rtol=0, atol=0)  # the same preconditioner
    assert SpectralPreconditioner(spectral_case("zeros").double(), x, None, x).positive_definite


@pytest.mark.parametrize("precondition", ["fft", "blocks", "none"])
def test_lbfgs_direction_is_the_textbook_two_loop_recursion(precondition):
    """The search direction after each step equals the textbook two-loop recursion with
    H0 = gamma P (gamma = s^T q / q^T P q of the newest pair) over the last ``history`` pairs
    s = y_{k+1} - y_k, q = g_{k+1} - g_k: the stored ``P q`` pairs and the lazy pair update
    are exact rewrites of it."""
    from energycrf.solvers.lbfgs import LBFGS
    from solver_problems import convex_energy

    E = convex_energy(2)
    x = torch.randn(1, 2, 7, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    solver = LBFGS(history=3, precondition=precondition)
    problem = Problem(E, x)
    y = x.clone()
    e, g = problem.energy_and_grad(y)
    state = solver.init_state(problem, y, e, g)
    P = (lambda v: v) if state.P is None else state.P
    pairs, checked = [], 0
    for _ in range(6):
        Pg = P(g)
        solver._take_pending(state, Pg)
        got = solver._direction(state, g, Pg)
        if pairs:
            q = g.clone()
            alphas = []
            for s_i, y_i in reversed(pairs[-3:]):
                a = (s_i * q).sum() / (s_i * y_i).sum()
                q = q - a * y_i
                alphas.append(a)
            s_n, y_n = pairs[-1]
            r = (s_n * y_n).sum() / (y_n * P(y_n)).sum() * P(q)
            for (s_i, y_i), a in zip(pairs[-3:], reversed(alphas)):
                r = r + s_i * (a - (y_i * r).sum() / (s_i * y_i).sum())
            torch.testing.assert_close(got, -r, rtol=1e-10, atol=1e-12)
            checked += 1
        out = solver.step(problem, y, e, g, state)
        assert all_accepted(out)
        pairs.append((out.y - y, out.grad - g))
        y, e, g = out.y, out.energy, out.grad
    assert checked == 5 and len(state.pairs) == 3  # the window was full for the last ones


@contextlib.contextmanager
def _counting_transfers():
    """One mock counting the host transfers of an L-BFGS step: its own and its line search's."""
    host = mock.Mock(wraps=host_module._host)
    with mock.patch("energycrf.solvers.lbfgs._host", host), mock.patch("energycrf.solvers.line_search._host", host):
        yield host


class _ScriptedLine:
    """A problem whose energy along ``y = alpha d`` is ``f(alpha)`` per sample (``d = 1`` everywhere:
    ``y`` holds ``alpha`` at every site), gradient ``-1`` at the start: the line search sees exactly
    the values it is given."""

    def __init__(self, f):
        self.f, self.trials, self.counts = f, [], {}

    def _alpha(self, y):
        return y.flatten(1)[:, 0]

    def energy(self, y):
        self.trials.append(self._alpha(y).clone())
        return self.f(self._alpha(y))

    def energy_and_grad(self, y):
        return self.energy(y), torch.full_like(y, -1.0)

    def grad(self, y):
        return torch.full_like(y, -1.0)


@pytest.mark.parametrize("state", [
    LBFGSState(P=None, gamma=torch.ones(5, dtype=torch.float64)),  # d = -gamma P g formed
    LBFGSState(P=torch.clone),  # d = -P g, its sign folded into the steps
])
def test_backtracking_interpolates_and_keeps_the_trial_in_a_tenth_to_a_half_of_the_step(state):
    """With ``E(0) = 0`` and slope ``g^T d = -n`` (``n`` sites), a failed trial ``E(a) = v`` gives the
    quadratic's minimiser ``n a^2 / (2 (v + n a))``, kept in ``[0.1 a, 0.5 a]``; without a curvature
    (``v`` NaN) the step is halved. Samples: interpolated (``E(1) = n``: 0.25), clamped low
    (``E(1) = 100 n``: 0.1), NaN (0.5), a unit step that passes, and two failures
    (``E(1) = n``, ``E(0.25) = n / 4``: 0.0625)."""
    n = 4
    y = torch.zeros(5, 1, 2, 2, dtype=torch.float64)
    g = torch.full_like(y, -1.0)
    e = torch.zeros(5, dtype=torch.float64)
    first = torch.tensor([float(n), 100.0 * n, float("nan"), -0.5 * n, float(n)], dtype=torch.float64)
    twice = torch.tensor([False, False, False, False, True])

    def f(alpha):
        later = torch.where(twice & (alpha == 0.25), torch.full_like(alpha, 0.25 * n), -0.01 * alpha * n)
        return torch.where(alpha == 1.0, first, later)  # later trials pass Armijo (c1 = 1e-4) but these

    solver = LBFGS(precondition="none")
    problem = _ScriptedLine(f)
    out = solver.step(problem, y, e, g, dataclasses.replace(state, pairs=[]))
    torch.testing.assert_close(problem.trials[0], torch.ones(5, dtype=torch.float64))  # the unit step
    expected = torch.tensor([0.25, 0.1, 0.5, 1.0, 0.0625], dtype=torch.float64)
    torch.testing.assert_close(out.y.flatten(1)[:, 0], expected)
    assert out.accepted.tolist() == [True] * 5
    torch.testing.assert_close(out.energy, torch.where(expected == 1.0, first, -0.01 * expected * n))


def test_the_first_step_without_preconditioner_or_scale_is_steepest_descent_of_length_at_most_one():
    """No ``P`` and no ``gamma`` yet: the trial is ``y - a g`` with ``a = min(1, 1 / |g|_1)`` (downhill),
    and one passing trial costs one evaluation and three transfers to the host (slope, ``|g|_1``, trial's scalars)."""
    y = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    g = torch.full_like(y, -1.0)
    problem = _ScriptedLine(lambda alpha: -alpha)
    state = LBFGSState(P=None)
    with _counting_transfers() as host:
        out = LBFGS(precondition="none").step(problem, y, torch.zeros(2, dtype=torch.float64), g, state)
    torch.testing.assert_close(out.y, torch.full_like(y, 0.25))  # |g|_1 = 4 per sample
    assert len(problem.trials) == 1 and host.call_count == 3


def test_a_preconditioned_first_step_transfers_the_slope_once():
    """With ``P`` and no pairs the direction is ``-P g``: a descent direction, so the slope is
    transferred once (no fallback) and the passing unit step once more."""
    E = (ec.energies.Unary(weight=0.8) + ec.energies.Pairwise(channels=1)).double()
    x = torch.randn(2, 1, 6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    problem = Problem(E, x)
    solver = LBFGS(precondition="chebyshev", degree=3)
    e, g = problem.energy_and_grad(x)
    state = solver.init_state(problem, x, e, g)
    with _counting_transfers() as host:
        out = solver.step(problem, x, e, g, state)
    assert host.call_count == 2 and out.accepted is None
    d = -state.P(g)
    torch.testing.assert_close(out.y, x + d)  # the unit step along -P g
