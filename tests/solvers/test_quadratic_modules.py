"""The quadratic solvers' modules after the split of ``solvers/quadratic.py``: the old module still
imports, with a ``DeprecationWarning``, and gives the same objects as the new ones; the package
keeps its public names; the problem's public store keeps each prepared operator once."""

from __future__ import annotations

import gc
import importlib
import sys
import weakref

import pytest
import torch

import energycrf as ec
from energycrf.solvers import cg, fft, hessian, quadratic_part, start
from energycrf.learned.unrolled import conjugate_gradient
from energycrf.solvers.base import Problem
from energycrf.solvers.preconditioners import blocks, chebyshev, options, spectral

MOVED = {
    "ConjugateGradient": cg,
    "FFTSolver": fft,
    "HessianOperator": hessian,
    "hessian_vector_product": quadratic_part,
    "impulse_spectrum": quadratic_part,
    "quadratic_part": quadratic_part,
    "problem_quadratic_part": quadratic_part,
    "SpectralPreconditioner": spectral,
    "spectral_preconditioner": spectral,
    "check_refine": spectral,
    "_floored_inverse": spectral,
    "_circulant_taps": spectral,
    "ChebyshevPreconditioner": chebyshev,
    "chebyshev_bounds": chebyshev,
    "chebyshev_preconditioner": chebyshev,
    "check_chebyshev": chebyshev,
    "CHEBYSHEV_ACCURACY": chebyshev,
    "CHEBYSHEV_START_ACCURACY": chebyshev,
    "HORNER_DEGREE": chebyshev,
    "BlockPreconditioner": blocks,
    "Preconditioned": options,
    "make_preconditioner": options,
    "quadratic_start": start,
    "quadratic_start_operator": start,
    "gradient_at_data": start,
    "QUADRATIC_START_REFINE": start,
}


def test_the_old_module_warns_and_gives_the_same_objects():
    sys.modules.pop("energycrf.solvers.quadratic", None)
    with pytest.warns(DeprecationWarning, match="energycrf.solvers.quadratic is deprecated"):
        old = importlib.import_module("energycrf.solvers.quadratic")
    for name, module in MOVED.items():
        assert getattr(old, name) is getattr(module, name), name
    for name in old.__all__:
        assert hasattr(old, name), name


def test_the_package_keeps_its_public_names():
    solvers = ec.solvers
    assert solvers.ConjugateGradient is cg.ConjugateGradient
    with pytest.warns(DeprecationWarning, match="energycrf.learned"):  # moved with the learned layer
        assert solvers.conjugate_gradient is conjugate_gradient  # the function, not the module cg.py
    assert solvers.FFTSolver is fft.FFTSolver
    assert solvers.ChebyshevPreconditioner is chebyshev.ChebyshevPreconditioner
    assert solvers.SpectralPreconditioner is spectral.SpectralPreconditioner
    assert solvers.hessian_vector_product is quadratic_part.hessian_vector_product
    assert solvers.Problem is Problem
    for name in solvers.__all__:
        assert hasattr(solvers, name), name


def test_the_problem_keeps_each_prepared_operator_once():
    problem = Problem(ec.energies.Unary() + ec.energies.Pairwise(channels=2), torch.zeros(1, 2, 6, 6))
    built = []
    assert problem.prepare("key", lambda: built.append(1) or "made") == "made"
    assert problem.prepare("key", lambda: built.append(2) or "other") == "made" and built == [1]
    assert problem.prepare("none", lambda: None) is None and "none" in problem.prepared
    P = spectral.spectral_preconditioner(problem, problem.x)
    assert spectral.spectral_preconditioner(problem, problem.x) is P and problem.prepared["spectral"] is P
    Q = chebyshev.chebyshev_preconditioner(problem, problem.x, 3)
    assert problem.prepared["chebyshev"] == {(3, chebyshev.CHEBYSHEV_ACCURACY): Q}
    assert problem.prepared["quadratic_part"] is P.quadratic_part is Q.quadratic_part
    no_quadratic = Problem(ec.energies.FieldOfExperts(channels=2), torch.zeros(1, 2, 6, 6))
    assert spectral.spectral_preconditioner(no_quadratic, no_quadratic.x) is None
    assert no_quadratic.prepared == {"quadratic_part": None, "spectral": None}


def test_a_solve_stores_nothing_on_the_energy():
    """The solvers' caches (the quadratic part's sum, prepared operators, shifted diagonals) live in
    the problem and in the solvers' weak table, not on the energy or its terms; the table does
    not keep the energy alive."""
    E = ec.energies.Unary() + ec.energies.Pairwise(channels=2) + ec.energies.FieldOfExperts(channels=2)
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    before = {id(m): set(vars(m)) for m in E.modules()}
    for precondition in ("chebyshev", "fft"):
        ec.solve(E, x, method="lbfgs", precondition=precondition, y0="quadratic", max_iters=2)
    assert {id(m): set(vars(m)) for m in E.modules()} == before
    assert quadratic_part.quadratic_part(E) is quadratic_part.quadratic_part(E)
    ref = weakref.ref(E)
    del E
    gc.collect()
    assert ref() is None
