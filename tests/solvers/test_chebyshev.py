"""The Chebyshev preconditioner (``precondition="chebyshev"``): the energies' spectral bounds
enclose the Hessian's spectrum (against ``eigvalsh`` of the explicit Hessian), the operator is
the Chebyshev polynomial of the quadratic part's Hessian (against ``numpy``'s Chebyshev
polynomials of the explicit matrix), symmetric positive definite with the stated accuracy,
its degree is the smallest that meets the accuracy, the quadratic terms' prepared Hessian
operators equal their products, and L-BFGS and CG with it reach the reference minima. The
quadratic part it is built on (anchors, sums, the start) is tested in ``test_quadratic_part.py``."""

from __future__ import annotations

import copy
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.solvers.base import Problem
from energycrf.solvers.hessian import HessianOperator
from energycrf.solvers.preconditioners import chebyshev as cheb
from energycrf.solvers.start import quadratic_start
from energycrf.apps.compare_solvers import default_energy, noisy_photograph

from solver_problems import (BoxSmooth, SiteWeightedUnary, convex_energy, dense_operator, exact_quadratic_minimiser,
                             explicit_hessian, foe, random_compat, unary_pairwise_case, unary_pairwise_params)

K = ec.energies
F64 = torch.float64


def _spectrum(E, x, c, b=0):
    return torch.linalg.eigvalsh(explicit_hessian(E, x[b:b + 1], x[b:b + 1], None if c is None else c[b:b + 1]).detach())


@given(params=unary_pairwise_params, extra_h=st.integers(0, 5), extra_w=st.integers(0, 5))
def test_convexity_margin_and_curvature_bound_enclose_the_hessian_spectrum(params, extra_h, extra_w):
    E, x, c = unary_pairwise_case(params, extra_h, extra_w)
    H, W = x.shape[-2:]
    lower, upper = E.convexity_margin(c), E.curvature_bound(H, W, c)
    for b in range(x.shape[0]):
        lam = _spectrum(E, x, c, b)
        assert lower <= float(lam.min()) * (1 + 1e-10) + 1e-12
        assert float(lam.max()) <= upper * (1 + 1e-10) + 1e-12


class _Bound(torch.nn.Module):
    def __init__(self, kernel):
        super().__init__()
        self.kernel = kernel

    def forward(self, height, width):
        return self.kernel.laplacian_bound(height, width)


def _bound_with(kernel, params, height, width):
    """``kernel.laplacian_bound`` with its parameters replaced by ``params`` (``torch.func.functional_call``)."""
    own = {f"kernel.{k}": v for k, v in params.items() if k != "unused"}
    return torch.func.functional_call(_Bound(kernel), own, (height, width))


@given(radius=st.integers(1, 3), extra_h=st.integers(0, 6), extra_w=st.integers(0, 6),
       boundary=st.sampled_from(["zeros", "circular"]), sigma=st.floats(0.5, 3.0), strength=st.floats(0.1, 5.0),
       learnable=st.booleans())
def test_local_kernel_laplacian_bound_is_the_circulant_maximum(radius, extra_h, extra_w, boundary, sigma, strength,
                                                               learnable):
    """``D - W`` from the kernel's explicit matrix: its largest eigenvalue is the bound for a circular
    kernel and below it for zeros; Gershgorin's bound when the window does not fit."""
    kernel = K.LocalKernel(radius=radius, sigma=sigma, strength=strength, boundary=boundary, learnable=learnable).double()
    if learnable:
        with torch.no_grad():
            kernel.raw_weights.add_(0.3 * torch.randn(kernel.raw_weights.shape, generator=torch.Generator().manual_seed(radius), dtype=F64))
    s = 2 * radius + 1
    H, W = s + extra_h, s + extra_w
    for change in range(2):  # then the taps changed in place: the (memoised) bound follows their values
        if change:
            with torch.no_grad():
                (kernel.raw_weights if learnable else kernel.fixed_weights).mul_(1.7)
        Wm = kernel.dense(H, W).detach()
        lam = float(torch.linalg.eigvalsh(torch.diag(Wm.sum(1)) - Wm).max())
        bound = kernel.laplacian_bound(H, W)
        if boundary == "circular":
            assert bound == pytest.approx(lam, rel=1e-10, abs=1e-12)
        else:
            assert lam <= bound * (1 + 1e-12)
    # inside a torch.func transform, where learnable taps are wrapped tensors without a host copy: the same bound
    inside = []

    def total(params):
        inside.append(_bound_with(kernel, params, H, W))
        return sum(p.sum() for p in params.values()) + torch.zeros((), dtype=F64)

    torch.func.grad(total)({**dict(kernel.named_parameters()), "unused": torch.zeros((), dtype=F64)})
    assert inside[0] == pytest.approx(bound, rel=1e-12)
    small = K.LocalKernel(radius=radius, sigma=sigma, strength=strength).double()  # a window larger than the image
    Ws = small.dense(s - 1, s + 1).detach()
    assert small.laplacian_bound(s - 1, s + 1) == pytest.approx(2 * float(Ws.sum(1).max()))


@pytest.mark.parametrize("kernel", [K.LongRangeKernel(sigma=2.0, weight=0.3, boundary="zeros"),
                                    K.LongRangeKernel(sigma=2.0, weight=0.3, boundary="circular")])
def test_other_kernels_give_gershgorins_bound(kernel):
    Wm = kernel.double().dense(6, 5).detach()
    lam = float(torch.linalg.eigvalsh(torch.diag(Wm.sum(1)) - Wm).max())
    assert lam <= kernel.laplacian_bound(6, 5) == pytest.approx(2 * float(Wm.sum(1).max()))
    dense = K.DenseKernel(Wm)
    assert dense.laplacian_bound(6, 5) == pytest.approx(2 * float(Wm.sum(1).max()))


def test_scaled_and_summed_bounds():
    E = K.Unary(weight=0.5) + 3.0 * K.Pairwise(channels=2)
    pair = K.Pairwise(channels=2)
    assert E.curvature_bound(8, 8) == pytest.approx(1.0 + 3.0 * pair.curvature_bound(8, 8))
    assert (E + BoxSmooth()).curvature_bound(8, 8) is None  # a user term that does not say
    assert foe(channels=2).curvature_bound(8, 8) is None


def _chebyshev_reference(Hm, lower, upper, m, v):
    """``p(H) v`` with ``1 - lambda p(lambda) = T_m((theta - lambda) / delta) / T_m(theta / delta)``, from
    the eigendecomposition of the explicit Hessian and numpy's Chebyshev polynomial ``T_m``."""
    theta, delta = (upper + lower) / 2, (upper - lower) / 2
    T = np.polynomial.chebyshev.Chebyshev.basis(m)
    lam, V = np.linalg.eigh(Hm.numpy())
    p = (1 - T((theta - lam) / delta) / T(theta / delta)) / lam
    return torch.from_numpy(V @ (p * (V.T @ v.reshape(-1).numpy()))), float(1 / T(theta / delta))


@given(params=unary_pairwise_params, extra_h=st.integers(0, 3), extra_w=st.integers(0, 3), degree=st.integers(1, 9))
def test_chebyshev_operator_is_the_chebyshev_polynomial_of_the_hessian(params, extra_h, extra_w, degree):
    E, x, c = unary_pairwise_case(params, extra_h, extra_w, batch=1)
    P = cheb.ChebyshevPreconditioner(E, x, c, x, degree)
    assert (P.lower, P.upper) == pytest.approx((E.convexity_margin(c), E.curvature_bound(*x.shape[-2:], c)))
    Hm = explicit_hessian(E, x, x, c).detach()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(params["seed"]), dtype=F64)
    v_before = v.clone()
    expected, accuracy = _chebyshev_reference(Hm, P.lower, P.upper, degree, v)
    scale = float(expected.abs().max())
    torch.testing.assert_close(P(v).reshape(-1), expected, rtol=1e-9, atol=1e-11 * scale)
    assert torch.equal(v, v_before)  # the input is not touched
    assert P.accuracy == pytest.approx(accuracy, rel=1e-9)
    # a symmetric positive definite operator with |1 - lambda| <= accuracy on P H's spectrum
    Pm = dense_operator(P, x)
    torch.testing.assert_close(Pm, Pm.T, rtol=1e-9, atol=1e-11 * float(Pm.abs().max()))
    assert float(torch.linalg.eigvalsh(0.5 * (Pm + Pm.T)).min()) > 0
    residual = torch.linalg.eigvals(torch.eye(Hm.shape[0], dtype=F64) - Pm @ Hm).abs().max()
    assert float(residual) <= accuracy * (1 + 1e-8) + 1e-12


@given(params=unary_pairwise_params, degree=st.integers(1, cheb.HORNER_DEGREE), seed=st.integers(0, 100))
def test_horner_rule_equals_the_recurrence(params, degree, seed):
    """Degrees up to ``HORNER_DEGREE`` apply the monomial form: the same operator as the semi-iteration
    (float64, tight), and in float32 within a small multiple of round-off (its terms cancel by at
    most ~6x at these degrees)."""
    E, x, c = unary_pairwise_case(params, 2, 1)
    P = cheb.ChebyshevPreconditioner(E, x, c, x, degree)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    assert P.monomial is not None and len(P.monomial) == P.degree
    with torch.no_grad():
        recurrence = P._recurrence(v, graph=False)
    scale = float(recurrence.abs().max())
    torch.testing.assert_close(P(v), recurrence, rtol=1e-10, atol=1e-12 * scale)
    P32 = cheb.ChebyshevPreconditioner(copy.deepcopy(E).float(), x.float(), None if c is None else c.float(), x.float(), degree)
    err = float((P32(v.float()).double() - recurrence).abs().max())
    assert err <= 64 * torch.finfo(torch.float32).eps * scale
    if degree < cheb.HORNER_DEGREE:  # above it the recurrence applies the operator
        assert cheb.ChebyshevPreconditioner(E, x, c, x, cheb.HORNER_DEGREE + 1).monomial is None


@pytest.mark.filterwarnings("ignore::energycrf.solvers.result.SolverWarning")  # degrees above 32: tested below
@given(weight=st.floats(0.01, 10.0), strength=st.floats(0.01, 10.0), side=st.integers(5, 40))
def test_automatic_degree_is_the_smallest_that_meets_the_accuracy(weight, strength, side):
    E = (K.Unary(weight=weight) + K.Pairwise(channels=1, kernel=K.LocalKernel(radius=2, strength=strength))).double()
    x = torch.zeros(1, 1, side, side, dtype=F64)
    P = cheb.ChebyshevPreconditioner(E, x, None, x)
    assert P.accuracy <= cheb.CHEBYSHEV_ACCURACY
    if P.degree > 1:
        assert cheb.ChebyshevPreconditioner(E, x, None, x, P.degree - 1).accuracy > cheb.CHEBYSHEV_ACCURACY
    assert len(P.coefficients) == P.degree - 1  # m - 1 products per application


def test_a_diagonal_hessian_is_inverted_in_one_step():
    E = K.Unary(weight=0.7).double()
    x = torch.randn(2, 3, 5, 4, dtype=F64)
    P = cheb.ChebyshevPreconditioner(E, x, None, x, 5)
    assert P.degree == 1 and P.accuracy == 0.0 and not P.coefficients  # the degree applied
    torch.testing.assert_close(P(x), x / 1.4)


@pytest.mark.parametrize("make", [
    lambda: K.Unary(weight=[0.5, 2.0]) + K.Pairwise(channels=2),
    lambda: 2.5 * (K.Unary(weight=0.5) + K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1, boundary="circular"))),
    lambda: K.Unary() + K.Pairwise(channels=2, compatibility=random_compat(2, 4)),  # channels mix: the product
    lambda: K.Unary() + K.Pairwise(channels=2, kernel=K.LongRangeKernel(sigma=2.0, weight=0.2, boundary="zeros")),
    lambda: K.Unary() + BoxSmooth(0.5),  # a user term: forward-mode product
    lambda: K.Pairwise(channels=2) + 0.5 * K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1)),  # no diagonal term
    lambda: K.Unary(weight=[0.5, 2.0]),  # a diagonal only
])
def test_prepared_hessian_operator_equals_the_hessian(make):
    E = make().double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 6, 5, generator=g, dtype=F64)
    v = torch.randn(x.shape, generator=g, dtype=F64)
    v_before = v.clone()
    operator = HessianOperator.of_energy(E, x, None)
    got = operator(v)
    assert torch.equal(v, v_before)
    torch.testing.assert_close(got, E._hessian_vector_product(x, x, None, v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(operator(v, -0.3), -0.3 * got, rtol=1e-12, atol=1e-12)  # the scale folded in
    torch.testing.assert_close(operator(v, -0.3, 0.7), -0.3 * got + 0.7 * v, rtol=1e-12, atol=1e-12)  # and a shift
    with torch.no_grad():  # the shifted diagonals are kept by (scale, shift): pairs again and pairs sharing a number
        for s, t in [(-0.3, 0.7), (-0.3, 0.7), (-0.3, 0.1), (0.4, 0.7), (-0.3, 0.7)]:
            torch.testing.assert_close(operator(v, s, t), s * got + t * v, rtol=1e-12, atol=1e-12)
    assert torch.equal(v, v_before)
    Hm = explicit_hessian(E, x, x).detach()
    torch.testing.assert_close(got[0].reshape(-1), Hm @ v[0].reshape(-1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_lbfgs_with_chebyshev_reaches_the_reference_minimum(dtype):
    E = convex_energy(channels=2, dtype=dtype)
    x = torch.randn(3, 2, 12, 10, generator=torch.Generator().manual_seed(5), dtype=dtype)
    ref = ec.solve(E.double(), x.double(), method="lbfgs", precondition="fft", max_iters=300, tol=0.0, gtol=1e-12)
    for y0 in (None, "quadratic"):
        res = ec.solve(E, x, method="lbfgs", precondition="chebyshev", y0=y0, max_iters=200, tol=0.0,
                       gtol=1e-12 if dtype == F64 else 1e-5)
        if dtype == F64:  # float32 may stall at round-off before the relative gradient tolerance
            assert all(s == "converged" for s in res.status)
        tol = 1e-7 if dtype == F64 else 2e-4  # both stop where the energy stops changing (gradient ~1e-7)
        torch.testing.assert_close(res.y.double(), ref.y, rtol=tol, atol=tol)
        assert res.evaluations["quadratic_hvp"] > 0


@pytest.mark.parametrize("start_degree", [None, 1, 3])
def test_lbfgs_quadratic_start_uses_the_chebyshev_operator_and_no_fft(start_degree):
    E = convex_energy(channels=2)
    x = torch.randn(2, 2, 9, 8, generator=torch.Generator().manual_seed(6), dtype=F64)
    problem = Problem(E, x)
    P_start = cheb.chebyshev_preconditioner(problem, x, start_degree, cheb.CHEBYSHEV_START_ACCURACY)
    start = quadratic_start(problem, P_start)
    with mock.patch.object(torch.fft, "rfft2", wraps=torch.fft.rfft2) as rfft2:
        res = ec.solve(E, x, method="lbfgs", precondition="chebyshev", degree=3, start_degree=start_degree,
                       y0="quadratic", max_iters=2)
    assert rfft2.call_count == 0
    torch.testing.assert_close(res.energies[0], E(start, x))
    P = cheb.chebyshev_preconditioner(problem, x, 3)  # the steps' operator: the start's Hessian and bounds
    assert P.hessian is P_start.hessian and (P.lower, P.upper) == (P_start.lower, P_start.upper)
    if start_degree is None:  # automatic: the smallest degree with the start's (looser) accuracy
        assert P_start.accuracy <= cheb.CHEBYSHEV_START_ACCURACY
        assert P_start.degree == 1 or P.with_degree(P_start.degree - 1).accuracy > cheb.CHEBYSHEV_START_ACCURACY
    else:
        assert P_start.degree == start_degree


def test_start_degree_needs_chebyshev_and_an_int():
    with pytest.raises(ValueError, match="start_degree: applies to precondition='chebyshev' only"):
        ec.solvers.get_solver("lbfgs", precondition="fft", start_degree=2)
    with pytest.raises(ValueError, match="start_degree: expected None .* got 0"):
        ec.solvers.get_solver("conjugate_gradient", precondition="chebyshev", start_degree=0)


def test_a_site_dependent_quadratic_part_that_gives_its_bounds():
    """Chebyshev needs bounds, not translation invariance: a user term with a weight map that says
    its margin and bound works with L-BFGS and CG (the FFT operator only approximates it)."""

    class BoundedSiteUnary(SiteWeightedUnary):
        def convexity_margin(self, c=None):
            return 2 * float(self.site_weight.min())

        def curvature_bound(self, height, width, c=None):
            return 2 * float(self.site_weight.max())

    E = (BoundedSiteUnary(7, 6) + K.Pairwise(channels=2)).double()
    x = torch.randn(2, 2, 7, 6, generator=torch.Generator().manual_seed(7), dtype=F64)
    lam = _spectrum(E, x, None)
    assert E.convexity_margin() <= float(lam.min()) and float(lam.max()) <= E.curvature_bound(7, 6)
    exact = exact_quadratic_minimiser(E, x)
    for method in ("lbfgs", "conjugate_gradient"):
        res = ec.solve(E, x, method=method, precondition="chebyshev", max_iters=100, tol=0.0, gtol=1e-12)
        torch.testing.assert_close(res.y, exact.detach(), rtol=1e-8, atol=1e-9)


def test_conjugate_gradient_with_chebyshev_is_exact():
    E = (K.Unary(weight=0.8) + K.Pairwise(channels=2, compatibility=random_compat(2, 1))).double()
    x = torch.randn(2, 2, 8, 7, generator=torch.Generator().manual_seed(8), dtype=F64)
    res = ec.solve(E, x, method="conjugate_gradient", precondition="chebyshev", degree=2, max_iters=60, tol=0.0,
                   gtol=1e-12)
    # a sample may stop where its float64 energy no longer changes at all (tol=0), a gradient of
    # a few 1e-9: the iterate is then within ~1e-9 of the minimiser
    torch.testing.assert_close(res.y, exact_quadratic_minimiser(E, x).detach(), rtol=1e-8, atol=1e-9)


def test_one_iteration_reaches_the_benchmark_gap():
    """The solver benchmark's energy on a 64 x 64 photograph: one L-BFGS iteration with the
    Chebyshev preconditioner from the quadratic start reaches the 1e-6 relative gap."""
    E = default_energy(1, seed=0).double()
    x = noisy_photograph("camera", 64, 25.0, 0)[0].double()
    best = float(ec.solve(E, x, method="lbfgs", precondition="fft", max_iters=80, tol=1e-15, gtol=0.0).energies[-1].sum())
    res = ec.solve(E, x, method="lbfgs", precondition="chebyshev", y0="quadratic", max_iters=1, tol=0.0, gtol=0.0)
    # the start: its quadratic gradient and degree 2 (one product); the step: degree 3 (two)
    assert res.evaluations["energy_and_grad"] == 2 and res.evaluations["quadratic_hvp"] == 4
    assert (float(res.energies[-1].sum()) - best) / abs(best) < 1e-6


def test_chebyshev_refusals_name_the_alternatives():
    x = torch.randn(1, 2, 6, 6, dtype=F64)
    class MarginOnly(BoxSmooth):  # says its margin, not its bound
        def convexity_margin(self, c=None):
            return 0.0

    cases = [
        (foe(channels=2).double(), "has no quadratic term"),
        (K.Pairwise(channels=2).double() + foe(channels=2).double(), r"convexity margin is 0 <= 0"),
        ((K.Unary() + BoxSmooth()).double(), "gives no convexity margin"),
        ((K.Unary() + MarginOnly()).double(), "gives no curvature bound"),
    ]
    for E, why in cases:
        for method in ("lbfgs", "conjugate_gradient"):
            if method == "conjugate_gradient" and not E.is_quadratic:
                continue
            with pytest.raises(ValueError, match=f"precondition='chebyshev': .*{why}.*use precondition='fft' or 'blocks'"):
                ec.solve(E, x, method=method, precondition="chebyshev")
    E = convex_energy(channels=2)
    for degree in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match=r"degree: expected None \(automatic\) or an int >= 1"):
            ec.solve(E, x, method="lbfgs", precondition="chebyshev", degree=degree)
    with pytest.raises(ValueError, match="precondition: expected one of .*'chebyshev'"):
        ec.solve(E, x, method="lbfgs", precondition="chebychev")


@given(params=unary_pairwise_params, degree=st.integers(1, 5), seed=st.integers(0, 100))
def test_autograd_through_the_operator_is_the_operator(params, degree, seed):
    """``P`` is linear and symmetric, so the gradient of ``<w, P v>`` in ``v`` is ``P w``: autograd
    through the out-of-place path (taken when ``v`` requires a gradient) must give it."""
    E, x, c = unary_pairwise_case(params, 1, 2, batch=1)
    P = cheb.ChebyshevPreconditioner(E, x, c, x, degree)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=g, dtype=F64).requires_grad_(True)
    w = torch.randn(x.shape, generator=g, dtype=F64)
    out = P(v)
    (grad,) = torch.autograd.grad((w * out).sum(), v)
    torch.testing.assert_close(out.detach(), P(v.detach()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, P(w), rtol=1e-10, atol=1e-12)


def test_unrolled_conjugate_gradient_with_chebyshev_has_the_finite_difference_derivative():
    E = (K.Unary(0.5) + K.Pairwise(channels=1, kernel=K.LocalKernel(strength=3.0))).double()
    g = torch.Generator().manual_seed(0)
    x, w, dx = (torch.randn(1, 1, 10, 10, generator=g, dtype=F64) for _ in range(3))
    U = ec.learned.Unrolled(E, ec.solvers.ConjugateGradient(precondition="chebyshev"), num_iterations=2)
    xx = x.clone().requires_grad_(True)
    (U(xx) * w).sum().backward()
    h = 1e-6
    with torch.no_grad():
        fd = ((U(x + h * dx) * w).sum() - (U(x - h * dx) * w).sum()) / (2 * h)
    assert float((xx.grad * dx).sum()) == pytest.approx(float(fd), rel=1e-6)


class _Bounds(K.Unary):
    """A Unary term that reports the given bounds (to test their refusals)."""

    def __init__(self, margin, bound):
        super().__init__()
        self._margin, self._bound = margin, bound

    def convexity_margin(self, c=None):
        return self._margin

    def curvature_bound(self, height, width, c=None):
        return self._bound


@pytest.mark.parametrize("margin, bound, why", [
    (2.0, float("inf"), "not a finite interval"),
    (2.0, float("nan"), "not a finite interval"),
    (float("inf"), float("inf"), "not a finite interval"),
    (2.0, 1.0, "the bound must be at least the margin"),
    (1e-17, 4.0, "too ill-conditioned"),
])
def test_invalid_or_hopeless_spectral_intervals_are_refused(margin, bound, why):
    x = torch.randn(1, 1, 6, 6, dtype=F64)
    with pytest.raises(ValueError, match=f"precondition='chebyshev': .*{why}"):
        ec.solve(_Bounds(margin, bound).double(), x, method="lbfgs", precondition="chebyshev")


def test_large_degrees_do_not_overflow_and_ill_conditioned_automatic_degrees_warn():
    x = torch.zeros(1, 1, 16, 16, dtype=F64)
    E = (K.Unary(weight=1.0) + K.Pairwise(channels=1)).double()
    P = cheb.ChebyshevPreconditioner(E, x, None, x, 1000)
    assert P.degree == 1000 and 0.0 <= P.accuracy < 1e-300
    weak = (K.Unary(weight=1e-3) + K.Pairwise(channels=1)).double()
    for _ in range(2):  # every time (the polynomial's numbers are memoised, the warning is not)
        with pytest.warns(ec.solvers.SolverWarning, match="needs degree .* precondition='fft' is likely cheaper"):
            P = cheb.ChebyshevPreconditioner(weak, x, None, x)
    assert P.degree > cheb.CHEBYSHEV_WARN_DEGREE and P.accuracy <= cheb.CHEBYSHEV_ACCURACY
    assert cheb.chebyshev_accuracy(2.0, 3) == pytest.approx(1 / 26)  # T_3(2) = 4 * 8 - 3 * 2


def test_degree_needs_chebyshev_and_precondition_none_means_none():
    E = convex_energy(channels=2)
    x = torch.randn(1, 2, 6, 6, dtype=F64)
    for method in ("lbfgs", "conjugate_gradient"):
        with pytest.raises(ValueError, match="degree: applies to precondition='chebyshev' only"):
            ec.solvers.get_solver(method, precondition="fft", degree=3)
    assert ec.solvers.LBFGS(precondition=None).precondition == "none"
    torch.testing.assert_close(ec.solve(E, x, precondition=None, max_iters=3).y,
                               ec.solve(E, x, precondition="none", max_iters=3).y)


def test_a_duck_typed_quadratic_part_is_applied_through_its_product():
    """An object with only the product and the two bounds (no prepared operator) gets the same
    polynomial as the energy it wraps, by Horner and by the recurrence."""
    E = (K.Unary(weight=0.6) + K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1, strength=1.5))).double()
    x = torch.randn(2, 2, 6, 7, generator=torch.Generator().manual_seed(11), dtype=F64)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(12), dtype=F64)

    class Duck:
        def _hessian_vector_product(self, y, x, c, v):
            return E._hessian_vector_product(y, x, c, v)

        def convexity_margin(self, c=None):
            return E.convexity_margin(c)

        def curvature_bound(self, height, width, c=None):
            return E.curvature_bound(height, width, c)

    for degree in (3, cheb.HORNER_DEGREE + 2):
        torch.testing.assert_close(cheb.ChebyshevPreconditioner(Duck(), x, None, x, degree)(v),
                                   cheb.ChebyshevPreconditioner(E, x, None, x, degree)(v), rtol=1e-12, atol=1e-12)
