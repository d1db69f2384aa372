"""Preconditioners of L-BFGS and conjugate gradients (``precondition=``), one module each:

- :mod:`~energycrf.solvers.preconditioners.spectral`: ``"fft"``, the inverse circulant of the
  quadratic part with Richardson steps for the border (:class:`SpectralPreconditioner`);
- :mod:`~energycrf.solvers.preconditioners.chebyshev`: ``"chebyshev"``, a polynomial in the
  quadratic part's Hessian (:class:`ChebyshevPreconditioner`);
- :mod:`~energycrf.solvers.preconditioners.blocks`: ``"blocks"``, the inverse curvature blocks;
- :mod:`~energycrf.solvers.preconditioners.options`: the option itself (``Preconditioned``,
  ``make_preconditioner``).

This package's namespace holds the first two only: the last two import the driver
(:mod:`energycrf.solvers.base`), which imports the quadratic start, which imports this package.
"""

from .chebyshev import CHEBYSHEV_ACCURACY, CHEBYSHEV_START_ACCURACY, ChebyshevPreconditioner, chebyshev_preconditioner
from .spectral import SpectralPreconditioner, spectral_preconditioner

__all__ = [
    "CHEBYSHEV_ACCURACY",
    "CHEBYSHEV_START_ACCURACY",
    "ChebyshevPreconditioner",
    "SpectralPreconditioner",
    "chebyshev_preconditioner",
    "spectral_preconditioner",
]
