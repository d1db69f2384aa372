"""The shipped solver suite (energycrf.testing.solver_checks): every registered solver passes it,
a user's registered solver is picked up by it and by the compare tool, broken solvers fail it."""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path

import pytest
import torch

import energycrf as ec
from energycrf.solvers import SOLVERS, Solver, StepOutput, block_solve, method_names, register_solver
from energycrf.solvers.compare import DEFAULT_METHODS, default_methods
from energycrf.testing import SOLVER_CHECKS, ConformanceError, SolverConformance, check_solver, solver_traits
from energycrf.testing.solver_problems import quadratic_problem

# Values of the built-ins' own options that each must refuse (the driver's options are checked for
# every solver by the suite itself); a method not listed here is checked on those alone.
INVALID_OPTIONS = {
    "coordinate_descent": {"order": ("diagonal",), "safeguard": ("sometimes",)},
    "sequential": {"safeguard": ("sometimes",)},
    "mean_field": {"damping": (0.0, 1.5, math.nan), "backoff": (1.0,), "grow": (0.5,)},
    "gradient_descent": {"c1": (0.0, 1.0), "shrink": (1.0,), "step_size": (0.0,)},
    "lbfgs": {"history": (0, 2.5, True), "c1": (0.5,), "precondition": ("magic",)},
    "torch_lbfgs": {"line_search": ("exact",), "history": (0, 2.5), "lr": (0.0, -1.0, math.nan, math.inf)},
    "scipy_lbfgs": {"history": (0, 2.5, True)},
    "fft": {"check_tol": (0.0, -1.0, math.nan, True)},
    "conjugate_gradient": {"precondition": ("magic",), "degree": (0,)},
}


@pytest.mark.parametrize("check", list(SOLVER_CHECKS))
@pytest.mark.parametrize("method", method_names())
def test_every_registered_solver_passes_the_suite(method, check):
    kw = {"invalid_options": INVALID_OPTIONS.get(method, {})} if check == "options" else {}
    SOLVER_CHECKS[check](method, **kw)


def test_traits_come_from_the_solver_classes():
    for name in method_names():
        traits = solver_traits(name)
        assert traits.cls is SOLVERS[name] and traits.monotone == SOLVERS[name].monotone
    assert solver_traits("fft").quadratic_only and solver_traits("conjugate_gradient").quadratic_only
    assert not solver_traits("lbfgs").quadratic_only and not solver_traits("scipy_lbfgs").quadratic_only

    class Declared(ec.solvers.MeanField):
        quadratic_only = True  # a class attribute, where set, is taken as it is

    assert solver_traits(Declared).quadratic_only


def test_the_base_class_has_a_test_per_check():
    assert {f"test_{name}" for name in SOLVER_CHECKS} <= set(dir(SolverConformance))


# ---------------------------------------------------------------------------- a user's solver


class HalfStepJacobi(Solver):
    """A user's solver: half the site-wise majoriser step at every site at once."""

    name = "toy_half_step_jacobi"

    def __init__(self, step: float = 0.5):
        if not 0.0 < step <= 1.0:  # NaN fails too
            raise ValueError(f"step: expected a number in (0, 1], got {step!r}")
        self.step_size = float(step)

    def step(self, problem, y, e, g, state):
        y_new = y - self.step_size * block_solve(problem.curvature(y), g)
        return StepOutput(y=y_new, energy=problem.energy(y_new))


@contextlib.contextmanager
def registered(cls):
    register_solver(cls)
    try:
        yield cls.name
    finally:
        SOLVERS.pop(cls.name)


def test_a_user_registered_solver_is_picked_up_by_the_suite_and_the_compare_tool():
    with registered(HalfStepJacobi) as name:
        assert name in method_names() and name in default_methods()
        check_solver(name, invalid_options={"step": (0.0, 2.0, math.nan)})
        E, x = quadratic_problem(batch=1, channels=1, height=4, width=4)
        table = ec.compare_solvers(E, x, max_iters=20)
        assert name in [r.method for r in table.rows]
        assert not table.rows[[r.method for r in table.rows].index(name)].status.startswith("skipped")
    assert name not in method_names() and name not in default_methods()


class TestAUsersSolverThroughTheBaseClass(SolverConformance):
    method = HalfStepJacobi.name
    invalid_options = {"step": (0.0, 2.0)}

    @pytest.fixture(autouse=True)
    def _registered(self):
        with registered(HalfStepJacobi):
            yield


def test_the_default_methods_are_the_registry_less_its_variants():
    """compare_solvers runs every registered method by default, except a class that subclasses
    another registered one (``sequential`` is coordinate descent one site at a time)."""
    assert DEFAULT_METHODS == default_methods()
    assert set(default_methods()) == set(method_names()) - {"sequential"}
    assert list(default_methods()) == [m for m in method_names() if m != "sequential"]  # registry order


# ---------------------------------------------------------------------------- broken solvers


class Stuck(Solver):
    """Returns ``y`` unchanged: the driver sees no energy change and calls it converged."""

    name = "toy_stuck"

    def step(self, problem, y, e, g, state):
        return StepOutput(y=y, energy=e)


class ClaimsMonotone(HalfStepJacobi):
    """Sets ``monotone`` but its first step goes uphill (then it converges)."""

    name = "toy_claims_monotone"
    monotone = True

    def init_state(self, problem, y, e, g):
        return {"t": 0}

    def step(self, problem, y, e, g, state):
        state["t"] += 1
        if state["t"] == 1:
            y_new = y + 0.5 * block_solve(problem.curvature(y), g)
            return StepOutput(y=y_new, energy=problem.energy(y_new))
        return super().step(problem, y, e, g, state)


class HidesDivergence(HalfStepJacobi):
    """Reports every sample converged after one step, whatever happened."""

    name = "toy_hides_divergence"

    def step(self, problem, y, e, g, state):
        out = super().step(problem, y, e, g, state)
        out.done = torch.ones(y.shape[0], dtype=torch.bool)
        return out


class MixesTheBatch(HalfStepJacobi):
    """Steps every sample with the batch's mean gradient scale: samples are not independent."""

    name = "toy_mixes_the_batch"

    def step(self, problem, y, e, g, state):
        scale = g.flatten(1).norm(dim=1)
        g = g * (scale.mean() / scale.clamp_min(1e-300)).view(-1, 1, 1, 1)
        return super().step(problem, y, e, g, state)


class QuadraticOnlyAfterWork(HalfStepJacobi):
    """Refuses non-quadratic energies, but only after evaluating them."""

    name = "toy_refuses_late"

    def init_state(self, problem, y, e, g):
        if not problem.is_quadratic:
            raise ValueError("toy_refuses_late minimises quadratic energies only")
        return None


class SwallowsBadValues(HalfStepJacobi):
    """Runs whatever it is given: a negative budget as none, a NaN tolerance as the default."""

    name = "toy_swallows_bad_values"

    def solve(self, E, x, c=None, *, max_iters=500, tol=None, **kw):
        return super().solve(E, x, c, max_iters=max(int(max_iters), 0), tol=None if tol != tol else tol, **kw)


@pytest.mark.parametrize("cls, failing", [
    (Stuck, {"exact", "monotone", "divergence"}),
    (ClaimsMonotone, {"monotone"}),
    (HidesDivergence, {"exact", "monotone", "divergence"}),
    (MixesTheBatch, {"batch"}),
    (QuadraticOnlyAfterWork, {"divergence"}),
    (SwallowsBadValues, {"options"}),
])
def test_a_broken_solver_fails_the_suite(cls, failing):
    with registered(cls) as name, pytest.raises(ConformanceError) as caught:
        check_solver(name)
    assert {f.check for f in caught.value.failures} >= failing, str(caught.value)
    assert str(caught.value).count(f"] {name}:") == len(caught.value.failures)


def test_check_solver_refuses_bad_arguments():
    with pytest.raises(ValueError, match="method: expected a registered solver name"):
        check_solver("no_such_method")
    with pytest.raises(ValueError, match="unknown check names"):
        check_solver("fft", checks=["exactness"])
    with pytest.raises(TypeError, match="options: only with a registry name"):
        check_solver(lambda: HalfStepJacobi(), options={"step": 0.5})
    with pytest.raises(TypeError, match="method: expected a registry name"):
        check_solver(42)


def test_check_solver_takes_a_class_an_instance_or_a_factory():
    check_solver(HalfStepJacobi, {"step": 0.6}, checks=["exact"])
    check_solver(HalfStepJacobi(), checks=["exact", "options"])
    check_solver(lambda: HalfStepJacobi(0.4), checks=["exact"])


# ---------------------------------------------------------------------------- the docs


def test_the_docs_table_names_every_built_in_method():
    text = (Path(__file__).resolve().parents[2] / "docs" / "solvers.md").read_text(encoding="utf-8")
    section = text.split("## The solvers and their update rules", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)
    builtin = [m for m in method_names() if SOLVERS[m].__module__.startswith("energycrf.")]
    assert sorted(listed) == sorted(builtin)


def test_torch_lbfgs_takes_a_non_contiguous_gradient():
    """torch.optim.LBFGS views the gradient flat: a user term whose gradient is a non-contiguous
    tensor (here stored transposed) still solves."""

    class Transposed(ec.Energy):
        def energy(self, y, x, c=None):
            return ((y - x) ** 2).sum((1, 2, 3))

        def _grad(self, y, x, c):
            return (2 * (y - x)).transpose(-1, -2).contiguous().transpose(-1, -2)

    x = torch.randn(2, 1, 5, 4, dtype=torch.float64)
    E = Transposed()
    assert not E.grad(x + 1, x).is_contiguous()
    res = ec.solve(E, x, method="torch_lbfgs", y0=x + 1, max_iters=50)
    assert torch.allclose(res.y, x, atol=1e-6)


@pytest.mark.parametrize("method, declared", [("conjugate_gradient", True), ("fft", True), ("lbfgs", None)])
def test_quadratic_only_is_declared_where_the_method_refuses_other_energies(method, declared):
    assert SOLVERS[method].quadratic_only is declared
    assert solver_traits(method).quadratic_only is bool(declared)
