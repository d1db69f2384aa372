"""Deprecated: the module that held the quadratic solvers, their preconditioners and the quadratic start.

Importing it warns (``DeprecationWarning``) and gives the same objects from their modules:

- :mod:`energycrf.solvers.cg`: :class:`ConjugateGradient`;
- :mod:`energycrf.solvers.fft`: :class:`FFTSolver`;
- :mod:`energycrf.solvers.quadratic_part`: ``quadratic_part``, ``hessian_vector_product``,
  ``impulse_spectrum``;
- :mod:`energycrf.solvers.preconditioners`: ``spectral`` (:class:`SpectralPreconditioner`),
  ``chebyshev`` (:class:`ChebyshevPreconditioner`, its bounds, degree and coefficients),
  ``blocks`` and ``options`` (``Preconditioned``, ``make_preconditioner``);
- :mod:`energycrf.solvers.start`: ``quadratic_start``, ``gradient_at_data``;
- :mod:`energycrf.solvers.hessian`: ``HessianOperator``.
"""

from __future__ import annotations

import warnings

from ..energies.operators import window_spectrum  # noqa: F401
from .base import Solver, StepOutput, sample_dot, sample_norm  # noqa: F401
from .cg import ConjugateGradient
from .fft import FFTSolver
from .hessian import HessianOperator  # noqa: F401
from .preconditioners.blocks import BlockPreconditioner  # noqa: F401
from .preconditioners.chebyshev import (CHEBYSHEV_ACCURACY, CHEBYSHEV_START_ACCURACY,  # noqa: F401
                                        CHEBYSHEV_WARN_DEGREE, HORNER_DEGREE, ChebyshevPreconditioner,
                                        _chebyshev_degree, _chebyshev_polynomial, _monomial, check_chebyshev,
                                        check_degree, chebyshev_accuracy, chebyshev_bounds,
                                        chebyshev_preconditioner)
from .preconditioners.options import PRECONDITIONERS as _PRECONDITIONERS  # noqa: F401
from .preconditioners.options import Preconditioned, make_preconditioner  # noqa: F401
from .preconditioners.spectral import (SpectralPreconditioner, _circulant_taps, _eigh_floored_inverse,  # noqa: F401
                                       _floor, _floored_inverse, _place_taps, check_refine,
                                       spectral_preconditioner)
from .problem import Problem  # noqa: F401
from .quadratic_part import _NOT_QUADRATIC  # noqa: F401
from .quadratic_part import apply_spectrum as _apply_spectrum  # noqa: F401
from .quadratic_part import (hessian_vector_product, impulse_spectrum, problem_quadratic_part,  # noqa: F401
                             quadratic_part)
from .quadratic_part import impulse_taps as _impulse_taps  # noqa: F401
from .quadratic_part import require_quadratic as _require_quadratic  # noqa: F401
from .result import SolverWarning  # noqa: F401
from .start import QUADRATIC_START_REFINE, gradient_at_data, quadratic_start, quadratic_start_operator  # noqa: F401

__all__ = [
    "ChebyshevPreconditioner",
    "ConjugateGradient",
    "FFTSolver",
    "hessian_vector_product",
    "impulse_spectrum",
    "quadratic_part",
    "SpectralPreconditioner",
    "chebyshev_bounds",
    "chebyshev_preconditioner",
    "make_preconditioner",
    "quadratic_start",
    "quadratic_start_operator",
    "CHEBYSHEV_ACCURACY",
    "CHEBYSHEV_START_ACCURACY",
    "spectral_preconditioner",
]

warnings.warn(
    "energycrf.solvers.quadratic is deprecated: import from energycrf.solvers (ConjugateGradient, FFTSolver, "
    "ChebyshevPreconditioner, SpectralPreconditioner, hessian_vector_product) or from its parts, "
    "energycrf.solvers.cg, .fft, .quadratic_part, .preconditioners and .start",
    DeprecationWarning,
    stacklevel=2,
)
