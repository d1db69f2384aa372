"""The driver's options, written once: :class:`SolveOptions`.

``ec.solve``, :meth:`Solver.solve <energycrf.solvers.base.Solver.solve>` and every method
(``ScipyLBFGS`` included) take the same keyword options with the same defaults; they are
the fields of :class:`SolveOptions`, validated in one place (:meth:`SolveOptions.__post_init__`,
and :meth:`SolveOptions.start` for ``y0``, which needs ``x``). Bad values raise a
``ValueError`` naming the option.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from numbers import Real
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["SolveOptions", "check_start", "option_names", "option_parameters", "with_option_signature"]

#: The named starts ``y0`` may take.
STARTS = ("quadratic",)
_ON_DIVERGE = ("warn", "raise", "ignore")
_WELL_POSED = ("warn", "raise", "ignore")
_HALF = (torch.float32, torch.float16, torch.bfloat16)


def check_start(y0: Any, x: Tensor) -> str | None:
    """The named start (``"quadratic"``) when ``y0`` names one; ``None`` for ``None`` or a tensor
    shaped like ``x``; otherwise a ``ValueError`` naming what was expected and got."""
    if isinstance(y0, str):
        if y0 in STARTS:
            return y0
        got = repr(y0)
    elif y0 is None or (isinstance(y0, Tensor) and y0.shape == x.shape):
        return None
    else:
        got = tuple(y0.shape) if isinstance(y0, Tensor) else type(y0).__name__
    raise ValueError(f"y0: expected None, a tensor shaped like x {tuple(x.shape)} or one of {STARTS}, got {got}")


def _is_number(value: Any) -> bool:
    """A real number, not a bool (``True`` is an int, never meant as a tolerance)."""
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class SolveOptions:
    """The options of the driver loop, shared by every method.

    Attributes:
        y0: the start: ``None`` (``x``), a tensor shaped like ``x`` (its dtype and device), or
            ``"quadratic"``: the minimiser of the energy's quadratic part (Unary + Pairwise),
            from its FFT inverse, or from the Chebyshev polynomial of a method with
            ``precondition="chebyshev"`` (:func:`energycrf.solvers.start.quadratic_start`;
            counted in the wall time; ``energies[0]`` is the energy there).
        max_iters: iterations of the method (a sweep over all colour classes for coordinate
            descent, one line search for L-BFGS, ...); a non-negative int.
        tol: a sample converges when ``|E_t - E_{t-1}| / max(|E_t|, |E_{t-1}|) <= tol`` after an
            accepted step. Default (``None``) ``max(1e-9, 10 * eps)`` of the dtype.
        gtol: ... or when ``||grad E(y_t)|| <= gtol * ||grad E(y_0)||``. Default (``None``)
            ``1e-5`` (float32 and the half types) / ``1e-8`` (float64).
        on_diverge: ``"warn"`` (a :class:`~energycrf.solvers.result.DivergenceWarning`),
            ``"raise"`` (:class:`~energycrf.solvers.result.DivergenceError`) or ``"ignore"``. A
            sample diverges when a value becomes non-finite, when ``E_t - min_s E_s > rise_tol *
            scale`` (scale: ``|min E| + |E_0 - min E|``), or when ``max |y| > blowup * (1 + max|x|
            + max|y0|)`` (an energy unbounded below).
        rise_tol, blowup: those limits, positive numbers (``inf`` switches a test off).
        well_posed: passed to ``E.check_well_posed(c, on_fail=...)`` first when the energy has
            that method: ``"warn"``, ``"raise"`` or ``"ignore"``.
        progress: show a tqdm bar.
        callback: ``callback(t, y, energies)`` after every iteration (its time is not counted
            in :attr:`SolveResult.times`). ``y`` is the solver's own iterate, not a copy: read
            or clone it, do not modify it in place (L-BFGS forms its next curvature pair from it).

    Example:
        >>> from energycrf.solvers.options import SolveOptions
        >>> SolveOptions(max_iters=50).tolerances(torch.float64)
        (1e-09, 1e-08)
    """

    y0: Tensor | str | None = None
    max_iters: int = 500
    tol: float | None = None
    gtol: float | None = None
    on_diverge: str = "warn"
    rise_tol: float = 1.0
    blowup: float = 1e6
    well_posed: str = "ignore"
    progress: bool = False
    callback: Callable[[int, Tensor, Tensor], None] | None = None

    def __post_init__(self) -> None:
        """Validate every option but ``y0``, which is checked against ``x`` (:meth:`start`)."""
        if not isinstance(self.max_iters, int) or isinstance(self.max_iters, bool) or self.max_iters < 0:
            raise ValueError(f"max_iters: expected a non-negative int, got {self.max_iters!r}")
        for name in ("tol", "gtol"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and float(value) >= 0):  # NaN fails too
                raise ValueError(f"{name}: expected None or a non-negative number, got {value!r}")
        if self.on_diverge not in _ON_DIVERGE:
            raise ValueError(f"on_diverge: expected one of {_ON_DIVERGE}, got {self.on_diverge!r}")
        for name in ("rise_tol", "blowup"):
            value = getattr(self, name)
            if not (_is_number(value) and value > 0):
                raise ValueError(f"{name}: expected a positive number (inf to switch the test off), got {value!r}")
        if self.well_posed not in _WELL_POSED:
            raise ValueError(f"well_posed: expected one of {_WELL_POSED}, got {self.well_posed!r}")
        if not isinstance(self.progress, (bool, np.bool_)):
            raise ValueError(f"progress: expected True or False, got {self.progress!r}")
        if self.callback is not None and not callable(self.callback):
            raise ValueError(f"callback: expected None or a callable callback(t, y, energies), "
                             f"got {type(self.callback).__name__}")

    @classmethod
    def from_keywords(cls, options: dict[str, Any]) -> SolveOptions:
        """The options from a solve's keyword arguments; a ``TypeError`` names unknown ones."""
        unknown = sorted(set(options) - set(option_names()))
        if unknown:
            raise TypeError(f"solve: unknown option(s) {unknown}; the driver's options are {option_names()} "
                            "(a method's own options go to its constructor, or to ec.solve)")
        return cls(**options)

    def tolerances(self, dtype: torch.dtype) -> tuple[float, float]:
        """``(tol, gtol)`` for a problem of ``dtype``: the given values, else the defaults above."""
        eps = torch.finfo(dtype).eps
        tol = max(1e-9, 10 * eps) if self.tol is None else float(self.tol)
        gtol = (1e-5 if dtype in _HALF else 1e-8) if self.gtol is None else float(self.gtol)
        return tol, gtol

    def start(self, x: Tensor) -> tuple[Tensor, str | None]:
        """``(y0, name)``: the start tensor (a copy of ``x`` for ``None`` and for a named start,
        which the solve computes later) and the start's name (``None`` for a given tensor).
        A ``ValueError`` when ``y0`` is not shaped, typed and placed like ``x``."""
        name = check_start(self.y0, x)
        if self.y0 is None or name is not None:
            return x.detach().clone(), name
        y0 = self.y0
        if y0.dtype != x.dtype or y0.device != x.device:
            raise ValueError(f"y0: expected dtype {x.dtype} on {x.device} like x, got {y0.dtype} on {y0.device}")
        return y0, None


def option_names() -> list[str]:
    """The driver's option names, in :class:`SolveOptions`'s order."""
    return [f.name for f in fields(SolveOptions)]


def option_parameters() -> list[inspect.Parameter]:
    """The options as keyword-only parameters (for the signatures of the solve functions, which
    take them as ``**options``): name, default and annotation from :class:`SolveOptions`."""
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                              default=f.default if f.default is not MISSING else inspect.Parameter.empty,
                              annotation=f.type)
            for f in fields(SolveOptions)]


def with_option_signature(fn: Callable | None = None, *, method_options: bool = False) -> Any:
    """Decorator: give ``fn(..., **options)`` a signature that lists the driver's options (``help``,
    IDEs and documentation show them); ``method_options`` keeps a trailing ``**options`` for a
    method's own. ``@with_option_signature`` or ``@with_option_signature(method_options=True)``."""
    if fn is None:
        return lambda f: with_option_signature(f, method_options=method_options)
    sig = inspect.signature(fn)
    head = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    tail = [inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD, annotation="Any")] if method_options else []
    fn.__signature__ = sig.replace(parameters=head + option_parameters() + tail)
    return fn
