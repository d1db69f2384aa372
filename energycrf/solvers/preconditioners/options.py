"""The ``precondition=`` option of L-BFGS and conjugate gradients: its validation, the
Chebyshev checks and start it brings (:class:`Preconditioned`), and the operator it names
(:func:`make_preconditioner`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..problem import Problem
from .blocks import BlockPreconditioner
from .chebyshev import CHEBYSHEV_START_ACCURACY, check_chebyshev, check_degree, chebyshev_preconditioner
from .spectral import spectral_preconditioner

__all__ = ["PRECONDITIONERS", "Preconditioned", "make_preconditioner"]

#: The values of ``precondition=`` (besides ``True``, ``"blocks"``, and ``False``/``None``, ``"none"``).
PRECONDITIONERS = ("blocks", "fft", "chebyshev", "none")


class Preconditioned:
    """A solver option set ``precondition`` (one of ``PRECONDITIONERS``, or a bool), ``degree`` and
    ``start_degree`` (of ``"chebyshev"``): validated when set, the Chebyshev bounds checked before any
    work, and ``y0="quadratic"`` started from a Chebyshev polynomial when the method uses it (of
    ``start_degree``, automatic: accuracy :data:`CHEBYSHEV_START_ACCURACY`)."""

    precondition: str | bool
    degree: int | None
    start_degree: int | None

    def _set_preconditioner(self, precondition: str | bool | None, degree: int | None,
                            start_degree: int | None = None) -> None:
        kind = {True: "blocks", False: "none", None: "none"}.get(precondition, precondition)
        if kind not in PRECONDITIONERS:
            raise ValueError(f"precondition: expected one of {PRECONDITIONERS} (or a bool), got {precondition!r}")
        for name, value in (("degree", degree), ("start_degree", start_degree)):
            if value is not None and kind != "chebyshev":
                raise ValueError(f"{name}: applies to precondition='chebyshev' only, got {name}={value!r} with "
                                 f"precondition={precondition!r}")
        self.precondition, self.degree = kind, check_degree(degree)
        self.start_degree = check_degree(start_degree, "start_degree")

    def check(self, problem: Problem, y0: Tensor) -> None:
        if self.precondition == "chebyshev":
            check_chebyshev(problem)

    def start_operator(self, problem: Problem) -> Any:
        if self.precondition == "chebyshev":
            return chebyshev_preconditioner(problem, problem.x, self.start_degree, CHEBYSHEV_START_ACCURACY)
        return None


def make_preconditioner(kind: str | bool, problem: Problem, y: Tensor, refine: int = 0,
                        degree: int | None = None):
    """``"blocks"`` (or True), ``"fft"``, ``"chebyshev"`` or ``"none"`` (or False) -> a callable or ``None``.

    ``"fft"`` falls back to ``"blocks"`` when the energy has no quadratic term or its quadratic
    part is singular (its inverse would blow up the directions only the other terms hold); ``refine``
    Richardson steps on the exact quadratic part correct its boundary
    (:class:`~energycrf.solvers.preconditioners.spectral.SpectralPreconditioner`).
    ``"chebyshev"`` (:class:`~energycrf.solvers.preconditioners.chebyshev.ChebyshevPreconditioner`
    of ``degree``) raises a ``ValueError`` where it has no spectral bounds (the solvers check first).
    """
    kind = {True: "blocks", False: "none"}.get(kind, kind)
    if kind not in PRECONDITIONERS:
        raise ValueError(f"precondition: expected one of {PRECONDITIONERS} (or a bool), got {kind!r}")
    if kind == "none":
        return None
    if kind == "chebyshev":
        return chebyshev_preconditioner(problem, y, degree)
    if kind == "fft":
        P = spectral_preconditioner(problem, y)
        if P is not None and P.positive_definite:
            return P.with_refine(refine)
    return BlockPreconditioner(problem, y)
