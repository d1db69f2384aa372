"""``ec.solve``: one entry point, a registry of methods by name."""

from __future__ import annotations

import inspect
import warnings
from importlib.metadata import entry_points
from typing import Any

from torch import Tensor

from .base import Solver
from .coordinate_descent import CoordinateDescent
from .gradient_descent import GradientDescent
from .lbfgs import LBFGS, ScipyLBFGS, TorchLBFGS
from .mean_field import MeanField
from .options import option_names, with_option_signature
from .cg import ConjugateGradient
from .fft import FFTSolver
from .result import SolveResult, SolverWarning

__all__ = ["SOLVERS", "get_solver", "register_solver", "solve", "method_names", "load_entry_points"]


class SequentialCoordinateDescent(CoordinateDescent):
    """Coordinate descent one site at a time in raster order: the slow reference."""

    name = "sequential"

    def __init__(self, radius: int | None = None, safeguard: bool | str = "auto", max_backtracks: int = 30):
        super().__init__(order="sequential", radius=radius, safeguard=safeguard, max_backtracks=max_backtracks)


#: name -> Solver class. Add your own with :func:`register_solver`.
SOLVERS: dict[str, type[Solver]] = {
    "coordinate_descent": CoordinateDescent,
    "sequential": SequentialCoordinateDescent,
    "mean_field": MeanField,
    "gradient_descent": GradientDescent,
    "lbfgs": LBFGS,
    "torch_lbfgs": TorchLBFGS,
    "scipy_lbfgs": ScipyLBFGS,
    "conjugate_gradient": ConjugateGradient,
    "fft": FFTSolver,
}


#: The entry-point group through which an installed package offers its solvers: in its
#: ``pyproject.toml``, ``[project.entry-points."energycrf.solvers"] my_method = "my_pkg.solver:MySolver"``.
ENTRY_POINT_GROUP = "energycrf.solvers"
_loaded_entry_points = False


def load_entry_points() -> None:
    """Register the solvers that installed packages offer in :data:`ENTRY_POINT_GROUP` (once; a
    name already registered is kept). Then the command line (a process that never imported the
    package's module) finds them by name too. An entry point that fails to load is skipped with a
    :class:`SolverWarning` naming it."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in SOLVERS:
            continue
        try:
            cls = point.load()
            register_solver(cls, point.name)
        except Exception as err:  # a broken plugin must not break ec.solve for every method
            warnings.warn(f"solver entry point {point.name!r} ({point.value}) could not be loaded: {err}",
                          SolverWarning, stacklevel=2)


def method_names() -> list[str]:
    """The registered methods' names: the built-ins, :func:`register_solver`'s, and the installed
    packages' (:func:`load_entry_points`)."""
    load_entry_points()
    return list(SOLVERS)


def register_solver(cls: type[Solver], name: str | None = None) -> type[Solver]:
    """Add a :class:`Solver` subclass to the registry (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"cls: expected a Solver subclass, got {cls!r}")
    SOLVERS[name or cls.name] = cls
    return cls


def get_solver(method: str | Solver, **options: Any) -> Solver:
    """A solver instance from a registry name and the method's options."""
    if isinstance(method, Solver):
        if options:
            raise TypeError(f"options {sorted(options)} given with a Solver instance; set them on the instance")
        return method
    if isinstance(method, str) and method not in SOLVERS:
        load_entry_points()
    if not isinstance(method, str) or method not in SOLVERS:
        hint = "; pass an instance (Method()) or a name" if isinstance(method, type) and issubclass(method, Solver) else ""
        raise ValueError(f"method: expected one of {method_names()}{hint}, got {method!r}")
    cls = SOLVERS[method]
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        valid = [k for k in params if k != "self"]
        raise TypeError(f"method {method!r} has no option(s) {unknown}; its options are {valid}")
    return cls(**options)


@with_option_signature(method_options=True)
def solve(E: Any, x: Tensor, c: Tensor | None = None, method: str | Solver = "lbfgs", **options: Any) -> SolveResult:
    """Minimise the energy ``E(y, x, c)`` over ``y`` and return a :class:`SolveResult`.

    Args:
        E: an ``ec.Energy`` (a built-in sum or a user term).
        x: observed latent ``[B, C, H, W]``; ``y`` starts at ``x`` unless ``y0`` is given.
        c: condition (``None``, ``[B, D]`` or ``[B, L, D]``).
        method: a registry name (:func:`method_names` lists them, a method added with
            :func:`register_solver` included; ``docs/solvers.md`` describes the built-in
            ones) or a :class:`Solver` instance (default ``"lbfgs"``, which applies to every
            energy).
        y0, max_iters, tol, gtol, on_diverge, rise_tol, blowup, well_posed, progress, callback:
            the driver's options (keywords), the fields of
            :class:`~energycrf.solvers.options.SolveOptions`, with its defaults and meanings.
            ``y0="quadratic"`` starts at the minimiser of the energy's quadratic part (Unary +
            Pairwise): a denoised start, from which L-BFGS needs fewer iterations
            (``docs/solvers.md``, "The quadratic start").
        **options: the method's own options (e.g. ``damping=0.5``): the arguments of its class,
            ``SOLVERS[method]`` (``help(ec.solvers.SOLVERS["lbfgs"])``); an unknown one is
            refused with a ``TypeError`` that lists them.

    Example:
        >>> import torch, energycrf as ec
        >>> E = ec.energies.Unary() + ec.energies.Pairwise(channels=4)
        >>> x = torch.randn(2, 4, 16, 16)
        >>> res = ec.solve(E, x, method="coordinate_descent")
        >>> res.energies.shape[1], res.status[0]
        (2, 'converged')
    """
    names = set(option_names())
    driver = {k: v for k, v in options.items() if k in names}
    own = {k: v for k, v in options.items() if k not in names}
    return get_solver(method, **own).solve(E, x, c, **driver)
