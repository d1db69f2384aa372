"""The conformance suite: checks that any energy term (built-in or yours) keeps the contract.

Plain functions (no test framework needed)::

    from energycrf.testing import check_energy
    check_energy(lambda case: MyTerm(channels=case.channels))

or a pytest base class with hypothesis-drawn cases (needs the ``test`` extra)::

    from energycrf.testing import EnergyConformance

    class TestMyTerm(EnergyConformance):
        def make_energy(self, case):
            return MyTerm(channels=case.channels)

The solver counterpart: ``check_solver("my_method")`` and the pytest base class
``SolverConformance`` (set ``method = "my_method"``) check a registered solver on problems
with known answers (:mod:`energycrf.testing.solver_checks`).

See ``docs/conformance.md``. :mod:`energycrf.testing.registry` lists every built-in term
factory; :mod:`energycrf.testing.strategies` has the hypothesis strategies.
"""

from __future__ import annotations

from .cases import CONDITION_KINDS, DEFAULT_CASES, Case
from .conformance import (
    CHECKS,
    ConformanceError,
    build,
    check_batch,
    check_convexity_margin,
    check_curvature_bound,
    check_curvature,
    check_device,
    check_dtype,
    check_energy,
    check_grad,
    check_gradcheck,
    check_interaction_radius,
    check_translation_invariance,
    check_majorizer,
    check_scaling,
    check_state_dict,
    check_sum,
    full_hessian,
    hessian_site_blocks,
    non_interacting_sites,
    randomize_parameters,
    site_distance,
)
from .solver_checks import (
    SOLVER_CHECKS,
    SolverTraits,
    check_solver,
    check_solver_batch,
    check_solver_divergence,
    check_solver_exact,
    check_solver_monotone,
    check_solver_options,
    solver_traits,
)

__all__ = [
    "CHECKS",
    "CONDITION_KINDS",
    "DEFAULT_CASES",
    "Case",
    "ConformanceError",
    "EnergyConformance",
    "build",
    "check_batch",
    "check_convexity_margin",
    "check_curvature_bound",
    "check_curvature",
    "check_device",
    "check_dtype",
    "check_energy",
    "check_grad",
    "check_gradcheck",
    "check_interaction_radius",
    "check_translation_invariance",
    "check_majorizer",
    "check_scaling",
    "check_state_dict",
    "check_sum",
    "full_hessian",
    "hessian_site_blocks",
    "non_interacting_sites",
    "randomize_parameters",
    "site_distance",
    "SOLVER_CHECKS",
    "SolverConformance",
    "SolverTraits",
    "check_solver",
    "check_solver_batch",
    "check_solver_divergence",
    "check_solver_exact",
    "check_solver_monotone",
    "check_solver_options",
    "solver_traits",
]


def __getattr__(name):
    # the pytest/hypothesis parts load on first use, so the plain checks need neither
    if name == "EnergyConformance":
        from .suite import EnergyConformance

        return EnergyConformance
    if name == "SolverConformance":
        from .solver_suite import SolverConformance

        return SolverConformance
    if name in ("strategies", "registry", "suite", "solver_suite"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
