"""A pytest base class that runs the solver checks on a registered solver.

Subclass :class:`SolverConformance` in a test module (name the subclass ``Test...``) and
say which solver it tests; pytest collects one test per check of
:data:`~energycrf.testing.SOLVER_CHECKS`::

    from energycrf.solvers import register_solver
    from energycrf.testing import SolverConformance

    @register_solver
    class HalfStepMeanField(Solver):
        name = "half_step_mean_field"
        ...

    class TestHalfStepMeanField(SolverConformance):
        method = "half_step_mean_field"
        options = {}

The checks are deterministic (fixed problems with known answers, no hypothesis), so the
class needs no configuration of the project's own.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from . import solver_checks

__all__ = ["SolverConformance"]


class SolverConformance:
    """Base class of solver conformance test classes.

    Attributes:
        method: a registry name (``"my_method"``) or a :class:`~energycrf.solvers.Solver`
            subclass; or override :meth:`make_solver` instead.
        options: the method's options the checks build it with.
        max_iters: the iteration budget of the convergence checks (``None``: each check's own).
        invalid_options: the method's own options with values it must refuse with a
            ``ValueError`` naming the option, e.g. ``{"damping": (0.0, 1.5)}``.
        skip_checks: names of checks (see ``energycrf.testing.SOLVER_CHECKS``) not to run.
    """

    method: ClassVar[Any] = None
    options: ClassVar[dict] = {}
    max_iters: ClassVar[int | None] = None
    invalid_options: ClassVar[dict] = {}
    skip_checks: ClassVar[tuple] = ()

    def make_solver(self):
        """A fresh solver instance (override for a solver built some other way)."""
        raise NotImplementedError

    def _method(self) -> tuple[Any, dict | None]:
        if type(self).make_solver is not SolverConformance.make_solver:
            return self.make_solver, None
        if self.method is None:
            raise NotImplementedError(f"{type(self).__name__} must set `method` (a registry name or a Solver "
                                      "class) or implement make_solver(self)")
        return self.method, dict(self.options)

    def run_check(self, check: str) -> None:
        if check in self.skip_checks:
            pytest.skip(f"{check} is not applicable to {type(self).__name__}")
        method, options = self._method()
        kw: dict[str, Any] = {}
        if check == "options":
            kw["invalid_options"] = dict(self.invalid_options)
        elif self.max_iters is not None:
            kw["max_iters"] = self.max_iters
        solver_checks.SOLVER_CHECKS[check](method, options, **kw)

    def test_exact(self):
        """Exact minimiser of a strictly convex quadratic (a dense solve of its Hessian)."""
        self.run_check("exact")

    def test_monotone(self):
        """No energy rise when the solver's class sets ``monotone``; convergence on a convex energy."""
        self.run_check("monotone")

    def test_divergence(self):
        """An energy unbounded below is reported diverged (or refused by a quadratic-only solver)."""
        self.run_check("divergence")

    def test_batch(self):
        """Each sample of a batch gets the answer it gets alone."""
        self.run_check("batch")

    def test_options(self):
        """Unknown options and invalid values are refused, naming the option."""
        self.run_check("options")
