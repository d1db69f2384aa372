"""Conformance checks every energy term must pass, as plain functions.

Each check has the form ``check_<name>(make_energy, case, **options)``: it builds the
energy with ``make_energy(case)`` (an :class:`energycrf.Energy`), draws inputs from the
:class:`~energycrf.testing.Case` and raises ``AssertionError`` with a precise message
when the term breaks the contract. :func:`check_energy` runs all of them over a list of
cases and reports every failure at once.

What is checked (``E`` the energy, ``g = grad E``, ``A_i`` the per-site curvature blocks):

- ``grad`` equals autograd (``torch.func.grad`` of ``E(y, x, c).sum()``) in float64, and
  ``E`` passes ``torch.autograd.gradcheck`` with respect to ``y``, ``x`` and the parameters;
- ``curvature`` gives symmetric PSD ``C x C`` blocks; for quadratic terms they are the
  Hessian's diagonal blocks; for every term they majorise ``E`` on sets ``S`` of
  non-interacting sites::

      E(y + delta_S) <= E(y) + g . delta + 1/2 sum_{i in S} delta_i^T A_i delta_i

  (an equality for quadratic terms);
- ``interaction_radius``: Hessian blocks of sites farther apart (Chebyshev distance, with
  wrap-around when ``periodic``) are zero, and samples of a batch never interact;
- ``translation_invariant`` (when a term claims it): the Hessian's response to a unit
  impulse is the same stencil at every site at least ``interaction_radius`` from the border
  (every site when ``periodic``), at any ``y`` and ``x``;
- sums and positive scalings add and scale ``E``, ``grad``, ``curvature`` and the margin;
- a batch equals its stacked single items (with per-sample conditions);
- outputs follow the input's dtype and device;
- ``state_dict`` round-trips into a freshly built term;
- ``convexity_margin(c)`` is a lower bound on the smallest Hessian eigenvalue, and
  ``check_well_posed`` agrees with its sign;
- ``curvature_bound(H, W, c)``, when given, is an upper bound on the largest one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from .cases import DEFAULT_CASES, Case
from .contract_checks import (check_batch, check_convexity_margin, check_curvature_bound, check_device, check_dtype,
                              check_scaling, check_state_dict, check_sum)
from .derivative_checks import (check_curvature, check_grad, check_gradcheck, check_interaction_radius,
                                check_majorizer, check_translation_invariance)
from .numerics import (ATOL, RTOL, MakeEnergy, build, full_hessian, hessian_site_blocks, leaf_terms,
                       non_interacting_sites, randomize_parameters, site_distance, uses_fallback_curvature)

__all__ = [
    "ATOL",
    "CHECKS",
    "RTOL",
    "ConformanceError",
    "Failure",
    "MakeEnergy",
    "build",
    "check_batch",
    "check_convexity_margin",
    "check_curvature",
    "check_curvature_bound",
    "check_device",
    "check_dtype",
    "check_energy",
    "check_grad",
    "check_gradcheck",
    "check_interaction_radius",
    "check_majorizer",
    "check_scaling",
    "check_state_dict",
    "check_sum",
    "check_translation_invariance",
    "full_hessian",
    "hessian_site_blocks",
    "leaf_terms",
    "non_interacting_sites",
    "randomize_parameters",
    "site_distance",
    "uses_fallback_curvature",
]

CHECKS: dict[str, Callable] = {
    "grad": check_grad,
    "gradcheck": check_gradcheck,
    "curvature": check_curvature,
    "interaction_radius": check_interaction_radius,
    "translation_invariance": check_translation_invariance,
    "majorizer": check_majorizer,
    "sum": check_sum,
    "scaling": check_scaling,
    "batch": check_batch,
    "dtype": check_dtype,
    "state_dict": check_state_dict,
    "convexity_margin": check_convexity_margin,
    "curvature_bound": check_curvature_bound,
}
"""Every check by name (``check_device`` is separate: it needs a CUDA device)."""


@dataclasses.dataclass
class Failure:
    """One failing check: its name, what it ran on (a :class:`Case`, or a solver's label) and the error."""

    check: str
    case: Any
    error: BaseException

    def __str__(self):
        return f"[{self.check}] {self.case}: {type(self.error).__name__}: {self.error}"


class ConformanceError(AssertionError):
    """Raised by :func:`check_energy` with every failing (check, case) pair."""

    def __init__(self, failures: list[Failure]):
        self.failures = failures
        lines = "\n".join(f"  {f}" for f in failures)
        super().__init__(f"{len(failures)} conformance failure(s):\n{lines}")


def check_energy(
    make_energy: MakeEnergy,
    cases: Iterable[Case] | None = None,
    *,
    checks: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    conditions: Sequence[str | None] | None = None,
    options: dict[str, dict] | None = None,
    device: str | torch.device | None = None,
) -> None:
    """Run the conformance checks on the term ``make_energy(case)`` builds.

    Args:
        make_energy: ``Case -> Energy``; use ``case.channels`` (and ``case.cond_dim`` for
            conditioned terms, ``case.seeded()`` for reproducible initialisation).
        cases: the cases to run (default :data:`~energycrf.testing.cases.DEFAULT_CASES`).
        checks: names from :data:`CHECKS` to run (default all), minus ``skip``.
        conditions: keep only cases whose condition kind is listed (e.g. ``[None]`` for a
            term that needs no condition, ``["pooled"]`` for one that needs ``[B, D]``).
        options: extra keyword arguments per check, e.g. ``{"convexity_margin": {"required": True}}``.
        device: also run :func:`check_device` on this device (e.g. ``"cuda"``).

    Raises:
        ConformanceError: listing every failing (check, case) pair.
    """
    if isinstance(make_energy, torch.nn.Module) or not callable(make_energy):
        raise TypeError(
            "make_energy must be a callable Case -> Energy (a factory, e.g. `lambda case: MyTerm()`), "
            f"got {type(make_energy).__name__}"
        )
    cases = list(DEFAULT_CASES if cases is None else cases)
    if conditions is not None:
        cases = [k for k in cases if k.condition in conditions]
    if not cases:
        raise ValueError("check_energy: no case left to run (check `cases` and `conditions`)")
    names = list(CHECKS if checks is None else checks)
    unknown = [n for n in list(names) + list(skip) if n not in CHECKS]
    if unknown:
        raise ValueError(f"check_energy: unknown check names {unknown}; expected names from {sorted(CHECKS)}")
    names = [n for n in names if n not in set(skip)]
    options = options or {}
    failures: list[Failure] = []
    for case in cases:
        for name in names:
            try:
                CHECKS[name](make_energy, case, **options.get(name, {}))
            except Exception as err:  # noqa: BLE001 - collected and re-raised together
                failures.append(Failure(name, case, err))
        if device is not None:
            try:
                check_device(make_energy, case, device=device)
            except Exception as err:  # noqa: BLE001
                failures.append(Failure("device", case, err))
    if failures:
        raise ConformanceError(failures)
