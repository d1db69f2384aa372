"""The one backtracking Armijo line search (solvers/line_search.py), against scripted line values,
alone and inside the two methods that use it (gradient descent and L-BFGS)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from energycrf.solvers import gradient_descent as gd_module
from energycrf.solvers import host as host_module
from energycrf.solvers import lbfgs as lbfgs_module
from energycrf.solvers import line_search
from energycrf.solvers.gradient_descent import GradientDescent, GradientDescentState
from energycrf.solvers.lbfgs import LBFGS, LBFGSState
from energycrf.solvers.line_search import armijo_backtracking

N = 4  # sites per sample: y is [B, 1, 2, 2]


class ScriptedLine:
    """Energy ``f(alpha)`` per sample where ``y`` holds ``alpha`` at every site; gradient ``-1``
    everywhere; every trial's ``alpha`` and every evaluation recorded."""

    def __init__(self, f):
        self.f, self.trials, self.counts = f, [], {"energy": 0, "energy_and_grad": 0, "grad": 0}

    def energy(self, y):
        self.counts["energy"] += 1
        alpha = y.flatten(1)[:, 0].clone()
        self.trials.append(alpha)
        return self.f(alpha)

    def energy_and_grad(self, y):
        self.counts["energy"] -= 1
        self.counts["energy_and_grad"] += 1
        return self.energy(y), torch.full_like(y, -1.0)

    def grad(self, y):
        self.counts["grad"] += 1
        return torch.full_like(y, -1.0)


def _line(B):
    y = torch.zeros(B, 1, 2, 2, dtype=torch.float64)
    return y, torch.zeros(B, dtype=torch.float64), torch.full_like(y, -1.0)


def _search(f, B, **kw):
    """Search from ``y = 0`` along ``d = 1`` (slope ``g^T d = -N``), ``E(0) = 0``."""
    y, e, g = _line(B)
    problem = ScriptedLine(f)
    kw = {"c1": 1e-4, "max_backtracks": 5, **kw}
    out = armijo_backtracking(problem, y, e, g, torch.ones_like(y), energy=np.zeros(B), slope=np.full(B, -float(N)),
                              **kw)
    return problem, out


def test_shrinking_halves_until_armijo_holds_per_sample():
    """Sample 0 passes at 1, sample 1 at 0.25 (E falls only below 0.3), sample 2 never (stalled):
    the trials, the accepted points, one gradient for the late sample only, the host scalars."""
    def f(a):
        return torch.stack([-a[0], torch.where(a[1] < 0.3, -a[1], a[1]), torch.ones_like(a[2])])

    problem, out = _search(f, 3, shrink=0.5, max_backtracks=3)
    assert [t.tolist() for t in problem.trials] == [[1, 1, 1], [1, 0.5, 0.5], [1, 0.25, 0.25], [1, 0.25, 0.125]]
    assert out.ok.tolist() == [True, True, False] and out.first_ok.tolist() == [True, False, False]
    np.testing.assert_array_equal(out.step, [1.0, 0.25, 0.125])
    torch.testing.assert_close(out.y.flatten(1)[:, 0], torch.tensor([1.0, 0.25, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out.energy, torch.tensor([-1.0, -0.25, 0.0], dtype=torch.float64))
    assert problem.counts == {"energy": 3, "energy_and_grad": 1, "grad": 1} and out.host is None
    step = out.step_output("no decrease")
    assert step.accepted.tolist() == [True, True, False] and step.stalled.tolist() == [False, False, True]


def test_interpolation_keeps_the_trial_in_a_tenth_to_a_half_of_the_step():
    """The quadratic through E(0) = 0, slope -N and E(1) = v has its minimiser at N / (2 (v + N)):
    v = N gives 0.25, v = 100 N is clamped to 0.1, v = 0.2 N to 0.5 (past a half), NaN to 0.5."""
    first = torch.tensor([N, 100.0 * N, 0.2 * N, float("nan")], dtype=torch.float64)

    def f(a):
        return torch.where(a == 1.0, first, -0.01 * a * N)

    problem, out = _search(f, 4)
    np.testing.assert_allclose(out.step, [0.25, 0.1, 0.5 / 1.2, 0.5], rtol=1e-15)  # 0.2 N: 1 / 2.4
    assert out.ok.all() and len(problem.trials) == 2


def test_a_fused_first_trial_that_passes_hands_over_its_point_and_scalars_in_one_transfer():
    host = mock.Mock(wraps=host_module._host)
    with mock.patch.object(line_search, "_host", host):
        problem, out = _search(lambda a: -a, 2, step=np.array([0.5, 0.25]))
    assert host.call_count == 1 and problem.counts == {"energy": 0, "energy_and_grad": 1, "grad": 0}
    np.testing.assert_allclose(out.host, [[-0.5, -0.25], [2.0, 2.0], [0.5, 0.25]])  # E, |g| = sqrt(N), max|y|
    assert out.step_output("-").accepted is None


def test_an_energy_only_first_trial_takes_one_gradient_at_the_accepted_point():
    problem, out = _search(lambda a: -a, 2, fused=False)
    assert problem.counts == {"energy": 1, "energy_and_grad": 0, "grad": 1}
    assert out.first_ok.all() and out.host is None


def test_no_decrease_below_round_off_is_a_stop_not_a_stall():
    """A predicted decrease c1 alpha |g^T d| below 16 eps |E|: the failed search accepts (no move)."""
    y, e, g = _line(1)
    e = torch.full((1,), 1e20, dtype=torch.float64)
    out = armijo_backtracking(ScriptedLine(lambda a: torch.full_like(a, 1e20 + 1e8)), y, e, g, torch.ones_like(y),
                              energy=np.array([1e20]), slope=np.array([-1.0]), c1=1e-4, max_backtracks=2)
    step = out.step_output("-")
    assert not out.ok.any() and step.accepted.tolist() == [True] and step.stalled.tolist() == [False]
    assert torch.equal(out.y, y) and float(out.energy) == 1e20


@pytest.mark.parametrize("fused", [True, False])
def test_gradient_descent_searches_by_halving_from_its_step_and_grows_the_accepted_one(fused):
    """GD from y = 0 (g = -1, first trial alpha = 1, so y_try = a): E(1) fails, E(0.5) passes: the
    accepted step 0.5, the next first trial 1.0 (grow 2), the next search energy-only."""
    y, e, g = _line(1)
    problem = ScriptedLine(lambda a: torch.where(a > 0.75, torch.ones_like(a), -a))
    state = GradientDescentState(alpha=torch.ones(1, dtype=torch.float64), fused=fused)
    with mock.patch.object(gd_module, "armijo_backtracking", wraps=armijo_backtracking) as search:
        out = GradientDescent().step(problem, y, e, g, state)
    assert search.call_count == 1 and search.call_args.kwargs["shrink"] == 0.5
    assert [t.tolist() for t in problem.trials] == [[1.0], [0.5]]
    torch.testing.assert_close(out.y, torch.full_like(y, 0.5))
    assert state.alpha.tolist() == [1.0] and state.fused is False
    assert problem.counts["grad"] == 1 and problem.counts["energy_and_grad"] == int(fused)


def test_lbfgs_searches_with_the_same_function_by_interpolation():
    y, e, g = _line(1)
    problem = ScriptedLine(lambda a: torch.where(a == 1.0, torch.full_like(a, float(N)), -0.01 * a * N))
    with mock.patch.object(lbfgs_module, "armijo_backtracking", wraps=armijo_backtracking) as search:
        out = LBFGS(precondition="none").step(problem, y, e, g, LBFGSState(P=None, gamma=torch.ones(1, dtype=torch.float64)))
    assert search.call_count == 1 and search.call_args.kwargs.get("shrink") is None
    assert [t.tolist() for t in problem.trials] == [[1.0], [0.25]]
    torch.testing.assert_close(out.y, torch.full_like(y, 0.25))
