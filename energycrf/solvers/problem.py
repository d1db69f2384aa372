"""The problem a solver sees: an energy with its data bound, counted evaluations, and a
per-problem store of prepared operators.

A solve makes one :class:`Problem` for ``(E, x, c)``. Solvers evaluate through it
(``energy``, ``grad``, ``energy_and_grad``, ``curvature``: no autograd graph through the
energy's parameters, each call counted for :attr:`SolveResult.evaluations`) and keep what they
prepare once per problem in its public store (:meth:`Problem.prepare`): the quadratic part of
the energy and its FFT and Chebyshev operators, which the quadratic start and the solver's
preconditioner share.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

from ..energies.energy import unchecked_values

__all__ = ["Problem"]


class Problem:
    """An energy with its data bound: ``energy(y)``, ``grad(y)``, ``curvature(y)``.

    Counts evaluations (reported in :attr:`SolveResult.evaluations`) and runs them
    without building an autograd graph through the energy's parameters.

    Attributes:
        E, x, c: the energy, the observation and the condition.
        counts: evaluations by kind (``"energy"``, ``"grad"``, ``"curvature"``,
            ``"energy_and_grad"``, and ``"quadratic_hvp"`` for products with the quadratic part).
        radius: the interaction radius, set by solvers that colour sites.
        prepared: operators prepared once for this problem, by key (:meth:`prepare`). They depend
            on ``E``, ``x`` and ``c`` only, never on an iterate: the quadratic part
            (``"quadratic_part"``), its FFT operator (``"spectral"``) and its Chebyshev operators
            (``"chebyshev"``, a dict by degree and accuracy), shared by the quadratic start and
            the solver's preconditioner.
    """

    def __init__(self, E: Any, x: Tensor, c: Tensor | None = None):
        if not callable(E) or not hasattr(E, "grad"):
            raise TypeError(
                f"E: expected an energycrf Energy (callable with a .grad method), got {type(E).__name__}"
            )
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor [B, C, H, W], got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x: expected a [B, C, H, W] tensor (rank 4), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
        if c is not None and not isinstance(c, Tensor):
            raise TypeError(f"c: expected None or a torch.Tensor, got {type(c).__name__}")
        self.E, self.x, self.c = E, x, c
        self.counts = {"energy": 0, "grad": 0, "curvature": 0}
        self.radius: int | None = None  # set by solvers that colour sites
        self.prepared: dict[Hashable, Any] = {}
        self._curv_cache: Tensor | None = None
        self._curv_quadratic: Tensor | None = None

    def prepare(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The operator kept under ``key`` in :attr:`prepared`, made by ``build()`` the first time
        (``None`` is kept too: a problem without a quadratic part has no FFT operator)."""
        if key not in self.prepared:
            self.prepared[key] = build()
        return self.prepared[key]

    @property
    def is_quadratic(self) -> bool:
        return bool(getattr(self.E, "is_quadratic", False))

    def energy(self, y: Tensor) -> Tensor:
        self.counts["energy"] += 1
        with torch.no_grad(), unchecked_values():  # the driver judges every value itself
            return self.E(y, self.x, self.c).detach()

    def grad(self, y: Tensor) -> Tensor:
        self.counts["grad"] += 1
        with torch.no_grad():
            return self.E.grad(y, self.x, self.c).detach()

    def energy_and_grad(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(energy(y), grad(y))`` from one fused evaluation (``E.energy_and_grad``, when the
        energy has it), counted as ``"energy_and_grad"``."""
        fused = getattr(self.E, "energy_and_grad", None)
        cls = type(self)
        if fused is None or cls.energy is not Problem.energy or cls.grad is not Problem.grad:
            # a subclass that evaluates differently (e.g. keeping the autograd graph) keeps its way
            return self.energy(y), self.grad(y)
        self.counts["energy_and_grad"] = self.counts.get("energy_and_grad", 0) + 1
        with torch.no_grad(), unchecked_values():
            e, g = fused(y, self.x, self.c)
        return e.detach(), g.detach()

    def curvature(self, y: Tensor) -> Tensor:
        """``[B, H, W, C, C]`` blocks ``A_i``.

        The blocks of quadratic terms do not depend on ``y``: they are computed once (the
        whole energy's when it is quadratic, else those of the quadratic terms of a sum,
        to which the other terms' blocks at ``y`` are added).
        """
        if self._curv_cache is not None:
            return self._curv_cache
        self.counts["curvature"] += 1
        E, x, c = self.E, self.x, self.c
        terms = list(getattr(E, "terms", []))
        with torch.no_grad():
            if self.is_quadratic:
                self._curv_cache = E.curvature(y, x, c).detach()
                return self._curv_cache
            if not any(bool(getattr(t, "is_quadratic", False)) for t in terms):
                return E.curvature(y, x, c).detach()
            if self._curv_quadratic is None:
                self._curv_quadratic = sum(t.curvature(y, x, c) for t in terms if t.is_quadratic).detach()
            return self._curv_quadratic + sum(t.curvature(y, x, c) for t in terms if not t.is_quadratic).detach()
