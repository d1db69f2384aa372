"""Conformance checks every solver must pass, built-in or registered by a user.

Each check has the form ``check_solver_<name>(method, options=None, **settings)``, where
``method`` is a registry name (``"lbfgs"``), a :class:`~energycrf.solvers.Solver` subclass,
a solver instance, or a factory ``() -> Solver``; it raises ``AssertionError`` with a
precise message when the solver breaks the contract. :func:`check_solver` runs all of them
and reports every failure at once. The problems are those of
:mod:`energycrf.testing.solver_problems` (float64, a few dozen unknowns).

What is checked (:math:`E` the energy, :math:`y^\\star` its minimiser):

- ``exact``: on a strictly convex quadratic, the result is :math:`y^\\star` (a dense solve
  of the Hessian) within ``EXACT_RTOL``/``EXACT_ATOL``, every sample ``"converged"``;
- ``monotone``: on a strictly convex energy (non-quadratic when the solver accepts one), a
  solver whose class sets ``monotone = True`` never raises a sample's energy (beyond
  ``MONOTONE_RTOL`` of round-off); every solver converges there, to a point whose gradient
  is ``GRAD_RTOL`` of the start's, and reports the energy of the point it returns;
- ``divergence``: on an energy unbounded below, every sample is reported ``"diverged"``,
  with a :class:`~energycrf.solvers.DivergenceWarning`, a
  :class:`~energycrf.solvers.DivergenceError` or silently, as ``on_diverge`` asks; a
  solver that only minimises quadratic energies refuses this one with ``ValueError``
  before evaluating it;
- ``batch``: each sample of a batch gets the answer it gets alone (within ``EXACT_*``);
- ``options``: an unknown option raises ``TypeError``/``ValueError`` naming it, and invalid
  values of the driver's options (``max_iters``, ``tol``, ``gtol``, ``on_diverge``) and of
  the options listed in ``invalid_options`` raise ``ValueError`` naming the option.

The facts a check needs about a solver come from the solver itself (:func:`solver_traits`):
``monotone`` is its class attribute; whether it only minimises quadratic energies is
whether it refuses the convex non-quadratic problem with ``ValueError`` (its ``check``), or
its class attribute ``quadratic_only`` where it sets one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .conformance import ConformanceError, Failure
from .solver_problems import convex_problem, exact_minimiser, quadratic_problem, unbounded_problem

__all__ = [
    "SOLVER_CHECKS",
    "SolverTraits",
    "solver_traits",
    "check_solver",
    "check_solver_exact",
    "check_solver_monotone",
    "check_solver_divergence",
    "check_solver_batch",
    "check_solver_options",
    "EXACT_RTOL",
    "EXACT_ATOL",
    "MONOTONE_RTOL",
    "GRAD_RTOL",
    "INVALID_DRIVER_OPTIONS",
]

#: The tolerances of the exact and batch checks, for a solve to ``tol=1e-15, gtol=1e-11`` in float64.
EXACT_RTOL = EXACT_ATOL = 1e-7
#: How far a monotone solver's energy may rise in one iteration, relative to the energy (round-off).
MONOTONE_RTOL = 1e-12
#: A converged point's gradient norm, relative to the start's.
GRAD_RTOL = 1e-6
#: The solve's stopping tolerances in these checks.
TOL, GTOL = 1e-15, 1e-11

#: Invalid values of the driver's options: every solver refuses them with a ValueError naming the option.
INVALID_DRIVER_OPTIONS: tuple[dict[str, Any], ...] = (
    {"max_iters": -1}, {"max_iters": 2.5}, {"tol": -1.0}, {"tol": math.nan}, {"gtol": -1.0}, {"gtol": math.nan},
    {"on_diverge": "sometimes"},
)

_UNKNOWN_OPTION = "not_an_option_of_this_solver"


# --------------------------------------------------------------------------------------
# the solver under test


@dataclasses.dataclass(frozen=True)
class _Target:
    label: str
    cls: type
    make: Callable[..., Any]  # make(**options) -> a fresh solver; options only where constructible
    constructible: bool  # from a name or a class: options (and an unknown one) can be passed
    plain: bool = False  # constructible with no options: make() is cls()


def _resolve(method: Any, options: dict | None) -> _Target:
    from energycrf.solvers import SOLVERS, Solver, get_solver, method_names

    options = dict(options or {})
    if isinstance(method, str):
        if method not in method_names():  # installed packages' solvers included
            raise ValueError(f"method: expected a registered solver name {sorted(SOLVERS)}, got {method!r}")
        return _Target(method, SOLVERS[method], lambda **kw: get_solver(method, **{**options, **kw}), True,
                       not options)
    if isinstance(method, type) and issubclass(method, Solver):
        name = next((n for n, cls in SOLVERS.items() if cls is method), None)
        if name is not None:  # registered: built as ec.solve builds it (options checked by the registry)
            return _Target(name, method, lambda **kw: get_solver(name, **{**options, **kw}), True, not options)
        return _Target(method.name, method, lambda **kw: method(**{**options, **kw}), True, not options)
    if options:
        raise TypeError("options: only with a registry name or a Solver class (a factory or an instance has its own)")
    if isinstance(method, Solver):
        return _Target(method.name, type(method), lambda: method, False)
    if callable(method):
        made = method()
        if not isinstance(made, Solver):
            raise TypeError(f"method: the factory must return a Solver, got {type(made).__name__}")
        return _Target(made.name, type(made), method, False)
    raise TypeError(f"method: expected a registry name, a Solver class or instance, or a factory, got {method!r}")


def _solve(target: _Target, E, x, **kw):
    return target.make().solve(E, x, **kw)


@dataclasses.dataclass(frozen=True)
class SolverTraits:
    """What the checks need to know about a solver, read from the solver itself.

    Attributes:
        label: its registry name (or class ``name``).
        cls: its class.
        monotone: ``cls.monotone``: every iteration lowers (or keeps) each sample's energy.
        quadratic_only: it minimises quadratic energies only (``cls.quadratic_only`` where set,
            else whether it refuses a convex non-quadratic energy with ``ValueError``).
    """

    label: str
    cls: type
    monotone: bool
    quadratic_only: bool


def _refuses(target: _Target, problem) -> str | None:
    """The ``ValueError`` message with which the solver refuses ``(E, x)``, or ``None``."""
    E, x = problem
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _solve(target, E, x, max_iters=1, on_diverge="ignore")
    except ValueError as err:
        return str(err)
    return None


def _probe(target: _Target) -> bool:
    """Whether the solver minimises quadratic energies only: it accepts the suite's quadratic
    problem and refuses the convex non-quadratic one (``ValueError``)."""
    small = dict(batch=1, channels=2, height=4, width=4)
    why = _refuses(target, quadratic_problem(**small))
    if why is not None:
        raise ValueError(f"{target.label} refuses the suite's quadratic problem (Unary + Pairwise, circular): {why}")
    return _refuses(target, convex_problem(**small)) is not None


@functools.lru_cache(maxsize=None)
def _probe_class(cls: type) -> bool:  # a class with its default options: probed once
    return _probe(_Target(cls.name, cls, cls, True, True))


def _traits(target: _Target) -> SolverTraits:
    quadratic_only = getattr(target.cls, "quadratic_only", None)
    if quadratic_only is None:
        quadratic_only = _probe_class(target.cls) if target.plain else _probe(target)
    return SolverTraits(target.label, target.cls, bool(getattr(target.cls, "monotone", False)), bool(quadratic_only))


def solver_traits(method: Any, options: dict | None = None) -> SolverTraits:
    """The :class:`SolverTraits` of ``method`` (a registry name, a Solver class or instance, or a
    factory) built with ``options``."""
    return _traits(_resolve(method, options))


def _statuses(res, expected: set[str], what: str) -> None:
    if not set(res.status) <= expected:
        lines = "; ".join(f"sample {b}: {s} ({r})" for b, (s, r) in enumerate(zip(res.status, res.reason)))
        raise AssertionError(f"{what}: expected status {sorted(expected)}, got {lines}")


def _check_shapes(res, x) -> None:
    if res.y.shape != x.shape or res.y.dtype != x.dtype:
        raise AssertionError(f"result y is {res.y.dtype} {tuple(res.y.shape)}, expected {x.dtype} {tuple(x.shape)}")
    if res.energies.dim() != 2 or res.energies.shape[1] != x.shape[0] or len(res.status) != x.shape[0]:
        raise AssertionError(f"energies must be [T + 1, B={x.shape[0]}] with a status per sample, got "
                             f"{tuple(res.energies.shape)} and {len(res.status)} statuses")
    converged = [s == "converged" for s in res.status]
    if res.converged.tolist() != converged:
        raise AssertionError(f"converged {res.converged.tolist()} disagrees with status {res.status}")


# --------------------------------------------------------------------------------------
# the checks


def check_solver_exact(method: Any, options: dict | None = None, *, max_iters: int = 3000) -> None:
    """On the strictly convex quadratic :func:`~energycrf.testing.solver_problems.quadratic_problem`,
    the solver converges to the exact minimiser :math:`y^\\star = -H^{-1} \\nabla E(0)`."""
    target = _resolve(method, options)
    E, x = quadratic_problem()
    y_star = exact_minimiser(E, x)
    res = _solve(target, E, x, max_iters=max_iters, tol=TOL, gtol=GTOL, on_diverge="ignore")
    _check_shapes(res, x)
    _statuses(res, {"converged"}, f"{target.label} on a strictly convex quadratic")
    torch.testing.assert_close(res.y, y_star, rtol=EXACT_RTOL, atol=EXACT_ATOL,
                               msg=lambda m: f"{target.label}: not the exact minimiser of the quadratic:\n{m}")


def _well_posed_problem(target: _Target, **kw) -> tuple:
    traits = _traits(target)
    return (quadratic_problem if traits.quadratic_only else convex_problem)(**kw), traits


def check_solver_monotone(method: Any, options: dict | None = None, *, max_iters: int = 3000) -> None:
    """On a strictly convex energy (non-quadratic when the solver accepts one): a ``monotone``
    solver never raises a sample's energy; every solver converges to a point of small gradient
    and reports the energy of the point it returns."""
    target = _resolve(method, options)
    (E, x), traits = _well_posed_problem(target, scales=(1.0, 3.0))
    res = _solve(target, E, x, max_iters=max_iters, tol=TOL, gtol=GTOL, on_diverge="ignore")
    _check_shapes(res, x)
    e = res.energies.to(torch.float64)
    if not bool(torch.isfinite(e).all()):
        raise AssertionError(f"{target.label}: non-finite energies on a strictly convex energy")
    if traits.monotone:
        rise = e[1:] - e[:-1] > MONOTONE_RTOL * e[:-1].abs()
        if bool(rise.any()):
            t, b = (int(v) for v in rise.nonzero()[0])
            raise AssertionError(f"{target.label} sets monotone = True, but sample {b}'s energy rose at iteration "
                                 f"{t + 1}: {float(e[t, b])!r} -> {float(e[t + 1, b])!r}")
    _statuses(res, {"converged"}, f"{target.label} on a strictly convex energy")
    if bool((e[-1] > e[0] + MONOTONE_RTOL * e[0].abs()).any()):
        raise AssertionError(f"{target.label}: final energies {e[-1].tolist()} above the start's {e[0].tolist()}")
    with torch.no_grad():
        at_y = E(res.y, x).to(torch.float64)
    torch.testing.assert_close(e[-1], at_y, rtol=1e-9, atol=1e-9 * (1 + float(at_y.abs().max())),
                               msg=lambda m: f"{target.label}: the last recorded energy is not E(result y):\n{m}")
    grad = torch.func.grad(lambda v: E(v, x).sum())
    g_end, g_start = (grad(v).flatten(1).norm(dim=1) for v in (res.y, x))
    if bool((g_end > GRAD_RTOL * g_start).any()):
        raise AssertionError(f"{target.label}: reported converged with gradient norms {g_end.tolist()}, "
                             f"more than {GRAD_RTOL:g} of the start's {g_start.tolist()}")


def check_solver_divergence(method: Any, options: dict | None = None, *, max_iters: int = 500) -> None:
    """On an energy unbounded below every sample is reported ``"diverged"``, as ``on_diverge``
    asks (a warning, an error, or silently), with a finite ``y``; a quadratic-only solver
    refuses the (non-quadratic) energy with ``ValueError`` before evaluating it."""
    from energycrf.solvers import DivergenceError, DivergenceWarning, SolverWarning

    target = _resolve(method, options)
    traits = _traits(target)
    E, x, bowl = unbounded_problem()
    if traits.quadratic_only:
        try:
            _solve(target, E, x, max_iters=max_iters)
        except ValueError:
            if bowl.evaluations:
                raise AssertionError(f"{target.label} refused a non-quadratic energy after evaluating it "
                                     f"{bowl.evaluations} time(s): refuse in Solver.check, before any work") from None
            return
        raise AssertionError(f"{target.label} refuses a convex non-quadratic energy but accepted an unbounded one")
    for on_diverge in ("warn", "raise", "ignore"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = _solve(target, E, x, max_iters=max_iters, on_diverge=on_diverge)
            except DivergenceError:
                if on_diverge == "raise":
                    continue
                raise AssertionError(f"{target.label} raised DivergenceError with on_diverge={on_diverge!r}") from None
        kinds = [w.category for w in caught]
        what = f"{target.label} on an energy unbounded below (on_diverge={on_diverge!r})"
        if on_diverge == "raise":
            raise AssertionError(f"{what}: no DivergenceError; status {res.status}")
        if on_diverge == "warn" and not any(issubclass(k, DivergenceWarning) for k in kinds):
            raise AssertionError(f"{what}: no DivergenceWarning; status {res.status}, warnings {kinds}")
        if on_diverge == "ignore" and any(issubclass(k, SolverWarning) for k in kinds):
            raise AssertionError(f"{what}: warned {kinds}")
        _check_shapes(res, x)
        _statuses(res, {"diverged"}, what)
        if not bool(torch.isfinite(res.y).all()):
            raise AssertionError(f"{what}: the returned y is not finite (keep the last finite iterate)")


def check_solver_batch(method: Any, options: dict | None = None, *, max_iters: int = 3000) -> None:
    """Each sample of a batch (samples of different scales) gets the answer it gets alone."""
    target = _resolve(method, options)
    (E, x), _ = _well_posed_problem(target, batch=3, scales=(0.3, 1.0, 3.0))
    kw = dict(max_iters=max_iters, tol=TOL, gtol=GTOL, on_diverge="ignore")
    res = _solve(target, E, x, **kw)
    _check_shapes(res, x)
    _statuses(res, {"converged"}, f"{target.label} on a batch")
    for b in range(x.shape[0]):
        alone = _solve(target, E, x[b : b + 1], **kw)
        _statuses(alone, {"converged"}, f"{target.label} on sample {b} alone")
        torch.testing.assert_close(res.y[b : b + 1], alone.y, rtol=EXACT_RTOL, atol=EXACT_ATOL,
                                   msg=lambda m: f"{target.label}: sample {b} of a batch differs from it alone:\n{m}")


def _refused_naming(action: Callable[[], Any], name: str, kinds: tuple, what: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            action()
    except kinds as err:
        if name not in str(err):
            raise AssertionError(f"{what}: {type(err).__name__} does not name {name!r}: {err}") from None
        return
    raise AssertionError(f"{what}: accepted (expected {' or '.join(k.__name__ for k in kinds)} naming {name!r})")


def check_solver_options(method: Any, options: dict | None = None, *,
                         invalid_options: dict[str, Iterable] | None = None) -> None:
    """An unknown option is refused (``TypeError``/``ValueError`` naming it); invalid values of the
    driver's options (:data:`INVALID_DRIVER_OPTIONS`) and of the method's options listed in
    ``invalid_options`` (``{"damping": [0.0, 1.5]}``) raise ``ValueError`` naming the option."""
    target = _resolve(method, options)
    if target.constructible:
        _refused_naming(lambda: target.make(**{_UNKNOWN_OPTION: 1}), _UNKNOWN_OPTION, (TypeError, ValueError),
                        f"{target.label} given an unknown option")
    E, x = quadratic_problem(batch=1, height=4, width=4)
    for bad in INVALID_DRIVER_OPTIONS:
        (name, value), = bad.items()
        _refused_naming(lambda: _solve(target, E, x, **bad), name, (ValueError,),
                        f"{target.label} with {name}={value!r}")
    for name, values in (invalid_options or {}).items():
        if not target.constructible:
            raise TypeError("invalid_options: only with a registry name or a Solver class")
        for value in values:
            _refused_naming(lambda: target.make(**{name: value}).solve(E, x), name, (ValueError,),
                            f"{target.label} with {name}={value!r}")


SOLVER_CHECKS: dict[str, Callable] = {
    "exact": check_solver_exact,
    "monotone": check_solver_monotone,
    "divergence": check_solver_divergence,
    "batch": check_solver_batch,
    "options": check_solver_options,
}
"""Every solver check by name."""


def check_solver(method: Any, options: dict | None = None, *, checks: Iterable[str] | None = None,
                 skip: Iterable[str] = (), max_iters: int | None = None,
                 invalid_options: dict[str, Iterable] | None = None) -> None:
    """Run the solver checks on ``method`` (a registry name, a Solver class or instance, or a
    factory ``() -> Solver``) built with ``options``.

    Args:
        checks: names from :data:`SOLVER_CHECKS` (default all), minus ``skip``.
        max_iters: the iteration budget of the convergence checks (default: each check's own).
        invalid_options: the method's own options with values it must refuse (``ValueError``).

    Raises:
        ConformanceError: listing every failing check.
    """
    _resolve(method, options)  # a bad `method` or `options` is the caller's error, raised now
    names = list(SOLVER_CHECKS if checks is None else checks)
    unknown = [n for n in [*names, *skip] if n not in SOLVER_CHECKS]
    if unknown:
        raise ValueError(f"check_solver: unknown check names {unknown}; expected names from {sorted(SOLVER_CHECKS)}")
    failures = []
    for name in (n for n in names if n not in set(skip)):
        kw: dict[str, Any] = {}
        if name == "options":
            kw["invalid_options"] = invalid_options
        elif max_iters is not None:
            kw["max_iters"] = max_iters
        try:
            SOLVER_CHECKS[name](method, options, **kw)
        except Exception as err:  # noqa: BLE001 - collected and re-raised together
            failures.append(Failure(name, _resolve(method, options).label, err))
    if failures:
        raise ConformanceError(failures)
