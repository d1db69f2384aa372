"""The driver's options, written once (SolveOptions): validation, and the same options and
defaults for ec.solve, Solver.solve and the scipy wrapper."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from solver_problems import F64, quadratic_energy

import energycrf as ec
from energycrf.solvers import SOLVERS
from energycrf.solvers.base import Solver
from energycrf.solvers.lbfgs import ScipyLBFGS
from energycrf.solvers.options import SolveOptions, option_names

BAD = [
    ("max_iters", -1), ("max_iters", 2.5), ("max_iters", True), ("max_iters", "10"),
    ("tol", -1e-3), ("tol", float("nan")), ("tol", "1e-5"), ("tol", True),
    ("gtol", -1.0), ("gtol", float("nan")), ("gtol", [1e-5]),
    ("on_diverge", "explode"), ("on_diverge", None),
    ("rise_tol", 0.0), ("rise_tol", -1.0), ("rise_tol", None), ("rise_tol", "1"),
    ("blowup", 0), ("blowup", float("nan")), ("blowup", True),
    ("well_posed", "loud"), ("well_posed", False),
    ("progress", "yes"), ("progress", None),
    ("callback", 3), ("callback", "print"),
]


@pytest.mark.parametrize("name, value", BAD)
def test_each_bad_option_is_a_value_error_naming_it(name, value):
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        SolveOptions(**{name: value})


@pytest.mark.parametrize("name, value", BAD[::3])
@pytest.mark.parametrize("method", ["mean_field", "lbfgs", "scipy_lbfgs"])
def test_every_entry_point_refuses_a_bad_option_before_any_work(method, name, value):
    E, x = quadratic_energy(1), torch.ones(1, 1, 3, 3, dtype=F64)
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        ec.solve(E, x, method=method, **{name: value})
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        ec.solvers.get_solver(method).solve(E, x, **{name: value})


def test_y0_is_checked_against_x():
    x = torch.ones(2, 1, 3, 3, dtype=F64)
    for y0, got in ((x[:1], r"\(1, 1, 3, 3\)"), ("qudratic", "'qudratic'"), ([0.0], "list")):
        with pytest.raises(ValueError, match=rf"^y0: expected None, a tensor shaped like x \(2, 1, 3, 3\) .*got {got}"):
            SolveOptions(y0=y0).start(x)
    with pytest.raises(ValueError, match="^y0: expected dtype torch.float64"):
        SolveOptions(y0=x.float()).start(x)
    y0, name = SolveOptions(y0="quadratic").start(x)
    assert name == "quadratic" and torch.equal(y0, x) and y0 is not x
    given = x + 1
    assert SolveOptions(y0=given).start(x) == (given, None)


def test_unknown_driver_options_are_a_type_error_naming_them():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['max_iter'\]"):
        ec.solvers.MeanField().solve(quadratic_energy(1), torch.ones(1, 1, 3, 3, dtype=F64), max_iter=3)
    with pytest.raises(TypeError, match="max_iter"):  # ec.solve hands it to the method, which has none
        ec.solve(quadratic_energy(1), torch.ones(1, 1, 3, 3, dtype=F64), method="mean_field", max_iter=3)


def test_the_options_are_frozen_and_their_defaults_resolve_by_dtype():
    opts = SolveOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.max_iters = 3
    assert opts.tolerances(torch.float64) == (1e-9, 1e-8)
    eps32 = torch.finfo(torch.float32).eps
    assert opts.tolerances(torch.float32) == (10 * eps32, 1e-5)
    for half in (torch.float16, torch.bfloat16):  # the driver's gtol (ScipyLBFGS had 1e-8 here)
        assert opts.tolerances(half)[1] == 1e-5
    assert SolveOptions(tol=0, gtol=1e-3).tolerances(torch.float32) == (0.0, 1e-3)


@pytest.mark.parametrize("fn", [ec.solve, Solver.solve, ScipyLBFGS.solve, ScipyLBFGS().solve],
                         ids=["ec.solve", "Solver.solve", "ScipyLBFGS.solve", "bound"])
def test_the_solve_signatures_list_the_options_with_their_defaults(fn):
    params = inspect.signature(fn).parameters
    for f in dataclasses.fields(SolveOptions):
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[f.name].default is f.default or params[f.name].default == f.default, f.name


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_every_method_gets_the_same_options_object(method, monkeypatch):
    """ec.solve and the method's own solve hand the method's loop (the driver's, or scipy's for
    scipy_lbfgs) one SolveOptions: the defaults when nothing is given, else what was given."""
    cls = SOLVERS[method]
    seen = []
    monkeypatch.setattr(cls, "_minimise", lambda self, problem, y0, start, opts: seen.append(opts) or _result())
    E, x = quadratic_energy(1, boundary="circular"), torch.ones(1, 1, 3, 3, dtype=F64)
    ec.solve(E, x, method=method)
    cls().solve(E, x)
    given = dict(max_iters=7, tol=0.0, gtol=1e-3, on_diverge="ignore", rise_tol=2.0, blowup=10.0, progress=True)
    ec.solve(E, x, method=method, **given)
    assert seen == [SolveOptions(), SolveOptions(), SolveOptions(**given)]
    assert set(given) < set(option_names())


def _result():
    return ec.solvers.SolveResult(y=torch.zeros(1), energies=torch.zeros(1, 1), grad_norms=torch.zeros(1, 1),
                                  times=torch.zeros(1), iterations=torch.zeros(1, dtype=torch.long),
                                  converged=torch.ones(1, dtype=torch.bool), status=["converged"], reason=["-"],
                                  method="m", wall_time=0.0)


def test_scipy_lbfgs_honours_the_driver_options():
    """The scipy wrapper goes through the driver's set-up, start, history and report: callback rows,
    max_iters, and y0 checks as for every other method."""
    E = quadratic_energy(2)
    x = torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    seen = []
    res = ec.solve(E, x, method="scipy_lbfgs", max_iters=3, tol=0.0, gtol=0.0,
                   callback=lambda t, y, e: seen.append((t, e.clone())))
    assert res.num_iterations == len(seen) <= 3 and [t for t, _ in seen] == list(range(1, len(seen) + 1))
    torch.testing.assert_close(torch.stack([e for _, e in seen]), res.energies[1:], rtol=0, atol=0)
    assert res.iterations.tolist() == [res.num_iterations] * 2 and res.evaluations["energy"] >= len(seen) + 1
    with pytest.raises(ValueError, match="y0: expected dtype"):
        ec.solve(E, x, method="scipy_lbfgs", y0=x.float())
