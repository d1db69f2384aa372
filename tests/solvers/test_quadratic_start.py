"""``y0="quadratic"``: the start at the minimiser of the energy's quadratic part.

It is ``x - P grad E_q(x)`` with the boundary-refined FFT preconditioner ``P`` (the exact
minimiser for a circular quadratic part), it ignores the other terms, every solver accepts
it, L-BFGS reuses its spectrum, and it is refused with a clear error where it has no
meaning."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.solvers.base import Problem
from energycrf.solvers.preconditioners.spectral import SpectralPreconditioner
from energycrf.solvers.start import quadratic_start
from energycrf.apps.compare_solvers import default_energy, noisy_photograph

from solver_problems import dense_operator, explicit_hessian, foe, quadratic_energy, spectral_case

F64 = torch.float64


def _problem(kind, height, width, seed):
    E = spectral_case(kind).double()
    g = torch.Generator().manual_seed(seed)
    if kind == "text":
        with torch.no_grad():
            E[1].compatibility.to_projection.weight.copy_(0.5 * torch.randn(E[1].compatibility.to_projection.weight.shape, generator=g))
    x = torch.randn(2, 2, height, width, generator=g, dtype=F64)
    c = torch.randn(2, 3, generator=g, dtype=F64) if kind == "text" else None
    return E, x, c


@given(kind=st.sampled_from(["zeros", "circular", "matrix", "text"]), height=st.integers(5, 11),
       width=st.integers(5, 11), seed=st.integers(0, 10_000))
def test_quadratic_start_is_one_refined_fft_step_and_exact_when_circular(kind, height, width, seed):
    E, x, c = _problem(kind, height, width, seed)
    x_given = x.clone()
    y0 = quadratic_start(Problem(E, x, c))
    assert torch.equal(x, x_given) and y0.data_ptr() != x.data_ptr()  # in-place work on its own buffers only
    eye = torch.eye(x[0].numel(), dtype=F64)
    for b in range(x.shape[0]):
        xb, cb = x[b:b + 1], None if c is None else c[b:b + 1]
        H = explicit_hessian(E, xb, xb, cb).detach()
        with torch.no_grad():
            grad_x = E.grad(xb, xb, cb).reshape(-1)
        exact = xb.reshape(-1) - torch.linalg.solve(H, grad_x)  # the quadratic part's minimiser
        if kind == "circular":
            torch.testing.assert_close(y0[b].reshape(-1), exact, rtol=1e-9, atol=1e-10)
            continue
        # zero boundary: P = (2 I - P0 H) P0 (one Richardson step), built from the dense circulant inverse
        P = SpectralPreconditioner(E, xb, cb, xb)
        spectrum = lambda: P.kinv if P.diagonal else P.Kinv  # noqa: E731
        v, spectrum_given = torch.randn_like(xb), spectrum().clone()
        v_given = v.clone()
        Pv = P(v, refine=2)  # the in-place work touches neither the input nor the spectrum
        assert torch.equal(v, v_given) and Pv.data_ptr() != v.data_ptr() and torch.equal(spectrum(), spectrum_given)
        P0 = dense_operator(P.apply_circulant, xb)
        expected = xb.reshape(-1) - (2 * eye - P0 @ H) @ P0 @ grad_x
        torch.testing.assert_close(y0[b].reshape(-1), expected, rtol=1e-9, atol=1e-10)
        # ... which is closer to the minimiser than x in the energy norm: (I - P0 H)^2 contracts
        err = lambda y: float((y - exact) @ H @ (y - exact))  # noqa: E731
        assert err(y0[b].reshape(-1)) < err(xb.reshape(-1))


def test_quadratic_start_ignores_the_other_terms():
    E_q = quadratic_energy(channels=2, seed=3)
    E = E_q + foe(channels=2, potential="student_t", seed=4).double()
    x = torch.randn(2, 2, 9, 8, generator=torch.Generator().manual_seed(5), dtype=F64)
    torch.testing.assert_close(quadratic_start(Problem(E, x)), quadratic_start(Problem(E_q, x)),
                               rtol=0, atol=0)


# every registered method that minimises non-quadratic energies (as the solver itself says)
METHODS = [m for m in ec.solvers.method_names() if not ec.testing.solver_traits(m).quadratic_only]


@pytest.mark.parametrize("method", METHODS)
def test_every_solver_starts_there_and_reaches_the_same_minimum(method):
    E = quadratic_energy(channels=2, seed=1) + foe(channels=2, potential="charbonnier", seed=2).double()
    x = torch.randn(2, 2, 8, 7, generator=torch.Generator().manual_seed(6), dtype=F64)
    start = quadratic_start(Problem(E, x))
    ref = ec.solve(E, x, method="lbfgs", max_iters=300, tol=1e-14, gtol=1e-12)
    # torch.optim.LBFGS's line search may stop at round-off before tol: "stalled" at the minimum
    res = ec.solve(E, x, method=method, y0="quadratic", max_iters=400, tol=1e-14, gtol=1e-10, on_diverge="ignore")
    assert set(res.status) <= {"converged", "stalled"}, res.reason
    with torch.no_grad():
        torch.testing.assert_close(res.energies[0], E(start, x), rtol=1e-12, atol=1e-12)
    assert float(res.times[0]) > 0.0  # the start's computation is part of the timed run
    torch.testing.assert_close(res.energies[-1], ref.energies[-1], rtol=1e-8, atol=1e-8)


def test_lbfgs_builds_one_spectrum_for_the_start_and_the_preconditioner():
    E = default_energy(1, seed=0).double()
    x = noisy_photograph("camera", 32, 25.0, 0)[0].double()
    with mock.patch.object(SpectralPreconditioner, "__init__", autospec=True,
                           side_effect=SpectralPreconditioner.__init__) as built:
        ec.solve(E, x, method="lbfgs", precondition="fft", y0="quadratic", max_iters=3)
    assert built.call_count == 1


def test_one_lbfgs_iteration_from_the_quadratic_start_reaches_the_benchmark_gap():
    """The solver benchmark's energy on a 64 x 64 photograph: one iteration from the quadratic
    start reaches the 1e-6 relative gap, one iteration from x is two orders short of it."""
    E = default_energy(1, seed=0).double()
    x = noisy_photograph("camera", 64, 25.0, 0)[0].double()
    best = float(ec.solve(E, x, method="lbfgs", precondition="fft", max_iters=80, tol=1e-15, gtol=0.0).energies[-1].sum())

    def gap_after_one(y0):
        res = ec.solve(E, x, method="lbfgs", precondition="fft", y0=y0, max_iters=1, tol=0.0, gtol=0.0)
        return (float(res.energies[-1].sum()) - best) / abs(best)

    assert gap_after_one("quadratic") < 1e-6
    assert gap_after_one(None) > 1e-5


def test_quadratic_start_refusals():
    x = torch.randn(1, 2, 6, 6, dtype=F64)
    E = quadratic_energy(channels=2)
    with pytest.raises(ValueError, match=r"y0: expected None, a tensor .* got 'qudratic'"):
        ec.solve(E, x, y0="qudratic")
    with pytest.raises(ValueError, match=r"y0: expected None, a tensor .* got 'qudratic'"):
        ec.solve(E, x, method="scipy_lbfgs", y0="qudratic")
    only_foe = foe(channels=2, potential="charbonnier").double()
    for method in ("lbfgs", "scipy_lbfgs"):
        with pytest.raises(ValueError, match="y0='quadratic': the energy .* has no quadratic term"):
            ec.solve(only_foe, x, method=method, y0="quadratic")
    singular = ec.energies.Pairwise(channels=2)  # constants cost nothing: no unique minimiser
    mixing = ec.energies.Pairwise(channels=2, compatibility=torch.tensor([[1.0, 0.5], [0.0, 1.0]]))  # C x C path
    for E_bad in (singular, mixing):
        for dtype in (torch.float32, F64):  # float32 leaves the zero at DC at round-off, not at 0
            with pytest.raises(ValueError, match="y0='quadratic': the quadratic part of the energy is not positive definite"):
                ec.solve(E_bad.to(dtype), x.to(dtype), y0="quadratic")
    # the start depends on the energy, not the method: said as such, not as "no method applies"
    with pytest.raises(ValueError, match="y0='quadratic': the energy .* has no quadratic term"):
        ec.compare_solvers(only_foe, x, methods=["lbfgs", "mean_field"], y0="quadratic")
    with pytest.raises(ValueError, match="y0: expected None, a tensor shaped like x .* or one of"):
        ec.compare_solvers(E, x, methods=["lbfgs"], y0="quadratc")
    # a tensor of another shape, or something else: one message everywhere
    shaped = r"y0: expected None, a tensor shaped like x \(1, 2, 6, 6\) or one of .* got "
    with pytest.raises(ValueError, match=shaped + r"\(1, 2, 2, 6\)"):
        ec.compare_solvers(E, x, methods=["lbfgs"], y0=x[:, :, :2])
    for method in ("lbfgs", "scipy_lbfgs"):
        with pytest.raises(ValueError, match=shaped + r"\(1, 2, 2, 6\)"):
            ec.solve(E, x, method=method, y0=x[:, :, :2])
        with pytest.raises(ValueError, match=shaped + "list"):
            ec.solve(E, x, method=method, y0=[0.0])


def test_compare_solvers_cli_start_option(tmp_path):
    from energycrf.cli import main

    assert main(["compare-solvers", "--size", "16", "--max-iters", "3", "--methods", "lbfgs,mean_field",
                 "--start", "quadratic", "--out-dir", str(tmp_path)]) == 0
    assert "start quadratic" in (tmp_path / "table.md").read_text()
