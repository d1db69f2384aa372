"""Inference solvers: minimise an energy ``E(y, x, c)`` over ``y`` and compare how.

``ec.solve(E, x, c, method=...)`` runs one method; ``ec.compare_solvers`` runs several and
tabulates and plots them. One file per method's step (``coordinate_descent``,
``mean_field``, ``gradient_descent``, ``lbfgs``, ``cg``, ``fft``), one driver loop
(:class:`~energycrf.solvers.base.Solver`), and the per-site majoriser step that
coordinate descent and mean-field share (:func:`~energycrf.solvers.base.block_solve`).
"""

from .api import SOLVERS, SequentialCoordinateDescent, get_solver, method_names, register_solver, solve
from .base import Problem, Solver, StepOutput, block_solve
from .cg import ConjugateGradient
from .compare import Comparison, ComparisonRow, compare_solvers
from .coordinate_descent import CoordinateDescent
from .fft import FFTSolver
from .gradient_descent import GradientDescent
from .lbfgs import LBFGS, ScipyLBFGS, TorchLBFGS
from .mean_field import MeanField
from .options import SolveOptions
from .preconditioners import ChebyshevPreconditioner, SpectralPreconditioner
from .quadratic_part import hessian_vector_product
from .result import DivergenceError, DivergenceWarning, SolveResult, SolverWarning

# The learned layer moved to energycrf.learned; its old names here warn for one release.
from .._compat import moved_attributes

__getattr__ = moved_attributes(__name__, dict.fromkeys(
    ("LatentCRF", "CompatibilityNetwork", "Unrolled", "Staged", "ImplicitDifferentiationWarning",
     "conjugate_gradient", "latent_crf", "unrolled"), "energycrf.learned"))

__all__ = [
    "solve",
    "compare_solvers",
    "Comparison",
    "ComparisonRow",
    "SolveResult",
    "SolveOptions",
    "SOLVERS",
    "get_solver",
    "method_names",
    "register_solver",
    "Solver",
    "StepOutput",
    "Problem",
    "block_solve",
    "CoordinateDescent",
    "SequentialCoordinateDescent",
    "MeanField",
    "GradientDescent",
    "LBFGS",
    "TorchLBFGS",
    "ScipyLBFGS",
    "ConjugateGradient",
    "FFTSolver",
    "ChebyshevPreconditioner",
    "SpectralPreconditioner",
    "hessian_vector_product",
    "DivergenceWarning",
    "DivergenceError",
    "SolverWarning",
]
