"""Divergence is reported, never returned as convergence; damping rescues mean-field."""

from __future__ import annotations

import pytest
import torch
from solver_problems import F64, BoxSmooth, autograd_grad, exact_quadratic_minimiser, foe

import energycrf as ec
from energycrf.energies import potentials
from energycrf.solvers import DivergenceError, DivergenceWarning, SolverWarning


def _box_foe(C: int = 1) -> ec.energies.FieldOfExperts:
    """Built-in FoE, one 3 x 3 all-ones filter, Huber expert with a huge quadratic zone:
    a quadratic term whose Hessian's top eigenvalue is 9x its diagonal."""
    term = ec.energies.FieldOfExperts(channels=C, num_filters=1, kernel_size=3, potential=potentials.Huber(delta=1e9))
    with torch.no_grad():
        term.weight.copy_(torch.ones_like(term.weight))
    return term


@pytest.mark.parametrize("coupling", ["builtin_foe", "user_box"])
def test_damping_converges_where_undamped_mean_field_diverges(coupling):
    if coupling == "builtin_foe":
        E = (ec.energies.Unary(weight=4.0) + _box_foe()).to(F64)
        damping = 0.3
    else:
        E = (ec.energies.Unary(weight=1.0) + BoxSmooth(a=1.0)).to(F64)
        damping = 0.6
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.warns(DivergenceWarning, match="diverged"):
        undamped = ec.solve(E, x, method="mean_field", max_iters=300)
    assert undamped.status == ["diverged", "diverged"]
    assert not bool(undamped.converged.any())
    assert bool(torch.isfinite(undamped.y).all())  # the last finite iterate, never NaN
    y_star = exact_quadratic_minimiser(E, x)
    for kw in ({"damping": damping}, {"adaptive": True}):
        res = ec.solve(E, x, method="mean_field", max_iters=3000, tol=0.0, gtol=1e-11, **kw)
        assert res.status == ["converged", "converged"], (kw, res.summary())
        torch.testing.assert_close(res.y, y_star, rtol=1e-7, atol=1e-7)
    adaptive = ec.solve(E, x, method="mean_field", adaptive=True, max_iters=50, tol=0.0, gtol=0.0)
    e = adaptive.energies
    assert bool((e[1:] <= e[:-1]).all())  # adaptive damping never accepts a rise


def _unbounded_energy():
    """The paper's concave FoE with big filters and a small unary weight: unbounded below."""
    return (ec.energies.Unary(weight=0.01) + foe(1, num_filters=4, kernel_size=5, potential="relu", scale=3.0)).to(F64)


@pytest.mark.parametrize("method", ["coordinate_descent", "mean_field", "gradient_descent", "lbfgs", "scipy_lbfgs"])
def test_an_energy_unbounded_below_is_reported_as_diverged(method):
    E = _unbounded_energy()
    with pytest.warns(ec.energies.EnergyWarning):
        E.check_well_posed()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    with pytest.warns(SolverWarning):
        res = ec.solve(E, x, method=method, max_iters=500)
    assert not bool(res.converged.any())
    assert bool(torch.isfinite(res.y).all())
    if method == "scipy_lbfgs":  # scipy's line search gives up first; the run-away probe finds the ray
        assert "falls without bound" in res.reason[0], res.summary()
    assert res.status == ["diverged", "diverged"], res.summary()
    with pytest.raises(DivergenceError):
        ec.solve(E, x, method=method, max_iters=500, on_diverge="raise")


def test_well_posed_option_refuses_an_ill_posed_energy_before_solving():
    E = _unbounded_energy()
    x = torch.randn(1, 1, 8, 8, dtype=F64)
    with pytest.raises(ec.energies.IllPosedEnergyError):
        ec.solve(E, x, method="mean_field", well_posed="raise")


def test_negative_curvature_in_cg_is_reported():
    class Saddle(ec.Energy):  # a quadratic that is unbounded below: -||y||^2 on top of a small unary
        is_quadratic = True
        interaction_radius = 0

        def energy(self, y, x, c=None):
            return -(y**2).sum((1, 2, 3))

    E = (ec.energies.Unary(weight=0.1) + Saddle()).to(F64)
    x = torch.randn(1, 1, 4, 4, dtype=F64)
    res = ec.solve(E, x, method="conjugate_gradient", on_diverge="ignore")
    assert res.status == ["diverged"]
    assert "non-positive curvature" in res.reason[0] or "ran away" in res.reason[0]


def test_converged_status_means_a_small_gradient():
    E = (ec.energies.Unary() + _box_foe()).to(F64)
    x = torch.randn(1, 1, 6, 6, dtype=F64)
    res = ec.solve(E, x, method="mean_field", damping=0.2, max_iters=5000, tol=1e-14, gtol=1e-10)
    assert res.status == ["converged"]
    assert float(autograd_grad(E, res.y, x).norm()) < 1e-7 * (1 + float(autograd_grad(E, x, x).norm()))


class _Scripted(ec.solvers.Solver):
    """A solver whose steps are given: step ``t`` returns ``y * scale[t]`` with energies ``energy[t]``
    (per sample) and gradient ``grad[t] * ones``, so the driver's per-sample rules see exactly them."""

    name = "scripted"

    def __init__(self, energy, scale, grad):
        self.energy, self.scale, self.grad = energy, scale, grad

    def step(self, problem, y, e, g, state):
        t = state["t"] = state.get("t", -1) + 1 if state is not None else 0
        e_new = torch.tensor(self.energy[t], dtype=y.dtype)
        scale = torch.tensor(self.scale[t], dtype=y.dtype).view(-1, 1, 1, 1)
        return ec.solvers.StepOutput(y=y * scale, energy=e_new, grad=torch.ones_like(y) * self.grad[t])

    def init_state(self, problem, y, e, g):
        return {}


def test_driver_rules_per_sample_against_scripted_steps():
    """Each sample stops on its own rule, judged against its own history: sample 0 rises more than
    ``rise_tol`` times its scale above its running minimum (not its start), sample 1 runs away,
    sample 2 turns NaN and keeps its last finite energy, sample 3 runs out of iterations."""
    x = torch.ones(4, 1, 2, 2, dtype=F64)
    E = ec.energies.Unary(weight=1.0).double()  # E(x) = 0 at the start: the scale comes from the script
    nan = float("nan")
    energy = [[-10.0, -1.0, -1.5, -1.0], [-9.0, -2.0, nan, -2.0], [-4.0, -3.0, -3.0, -3.0]]
    scale = [[1.0, 1.0, 1.0, 1.0], [1.0, 1e9, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    res = _Scripted(energy, scale, [1.0, 1.0, 1.0]).solve(E, x, max_iters=3, tol=0.0, gtol=0.0, rise_tol=0.5,
                                                         on_diverge="ignore")
    # sample 0: min -10, scale |-10| + |0 - -10| = 20; -4 - (-10) = 6 < 10: no rise; then it keeps going
    assert res.status[0] == "max_iters"
    res = _Scripted(energy, scale, [1.0, 1.0, 1.0]).solve(E, x, max_iters=3, tol=0.0, gtol=0.0, rise_tol=0.25,
                                                         on_diverge="ignore")
    # with rise_tol 0.25: 6 > 5, at iteration 3, measured from the running minimum -10 (from the start 0 it is a fall)
    assert res.status == ["diverged", "diverged", "diverged", "max_iters"]
    assert "rose" in res.reason[0] and "ran away" in res.reason[1] and "non-finite" in res.reason[2]
    assert res.iterations.tolist() == [3, 2, 2, 3]
    torch.testing.assert_close(res.energies[:, 2], torch.tensor([0.0, -1.5, -1.5, -1.5], dtype=F64))  # frozen, no NaN
    torch.testing.assert_close(res.energies[:, 1], torch.tensor([0.0, -1.0, -1.0, -1.0], dtype=F64))
    torch.testing.assert_close(res.energies[:, 0], torch.tensor([0.0, -10.0, -9.0, -9.0], dtype=F64))
    torch.testing.assert_close(res.energies[:, 3], torch.tensor([0.0, -1.0, -2.0, -3.0], dtype=F64))
    assert bool(torch.isfinite(res.y).all())


def test_the_blow_up_limit_is_relative_to_x_and_the_start():
    """A sample runs away when ``max |y| > blowup (1 + max |x| + max |y0|)``: past ``blowup`` alone
    is not enough (samples 0 and 2), past the limit is (samples 1 and 3, each by its own x)."""
    x = torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=F64).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    E = ec.energies.Unary(weight=1.0).double()
    energy, scale = [[-1.0, -1.0, -1.0, -1.0]], [[25.0, 31.0, 20.0, 26.0]]  # limits 30, 30, 50, 50
    res = _Scripted(energy, scale, [1.0]).solve(E, x, max_iters=1, tol=0.0, gtol=0.0, blowup=10.0,
                                               on_diverge="ignore")
    assert res.status == ["max_iters", "diverged", "max_iters", "diverged"]
    assert "ran away" in res.reason[1] and "ran away" in res.reason[3]


@pytest.mark.parametrize("method", ["gradient_descent", "scipy_lbfgs"])
@pytest.mark.parametrize("option", ["rise_tol", "blowup"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), True, "1e6", None])
def test_rise_tol_and_blowup_must_be_positive_numbers(method, option, value):
    x = torch.ones(1, 1, 2, 2, dtype=F64)
    with pytest.raises(ValueError, match=f"{option}: expected a positive number"):
        ec.solve(ec.energies.Unary().double(), x, method=method, **{option: value})


def test_the_scipy_run_away_probe_tells_bounded_from_unbounded():
    """After scipy's line search gives up, the probe calls an energy diverged only when it keeps
    falling along the steepest-descent ray up to the blow-up limit."""
    from energycrf.solvers.lbfgs import ScipyLBFGS
    from energycrf.solvers.problem import Problem
    from energycrf.testing.solver_problems import quadratic_problem, unbounded_problem

    E, x = quadratic_problem()
    y = x + 1.0
    assert not ScipyLBFGS._falls_without_bound(Problem(E, x), y, limit=1e6)
    E, x, _ = unbounded_problem()
    assert ScipyLBFGS._falls_without_bound(Problem(E, x), x.clone(), limit=1e6)
