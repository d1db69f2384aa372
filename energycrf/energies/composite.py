"""Flat sums and positive scalings of energy terms: ``a + b + c`` and ``2.0 * a``.

A sum is flat (``a + b + c`` is one sum of three, indexable by position and name) and adds
its terms' values, gradients, curvature blocks and Hessian structures; terms that offer the
convolution hook share one convolution (:mod:`energycrf.energies.fused`). A scaling multiplies
all of them by a positive number. :class:`~energycrf.energies.energy.Energy` builds both
through its ``+`` and ``*`` (this module declares them as its composites).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from .energy import Energy
from .fused import shared_convolutions
from .hessian import HessianStructure

__all__ = ["SumEnergy", "ScaledEnergy"]

class ScaledEnergy(Energy, composes="scaled"):
    """``scale * term`` with ``scale > 0`` (energy, gradient and curvature scale alike)."""

    _owns_grad = True

    def __init__(self, term: Energy, scale: float):
        super().__init__()
        if not isinstance(term, Energy):
            raise TypeError(f"term must be an Energy, got {type(term).__name__}")
        if isinstance(term, ScaledEnergy):
            scale, term = scale * term.scale, term.term
        self.term = term
        self.scale = float(scale)

    @property
    def term_name(self) -> str:
        return self.term.term_name

    channels = property(lambda self: self.term.channels)  # type: ignore[assignment]
    cond_dim = property(lambda self: self.term.cond_dim)  # type: ignore[assignment]
    requires_condition = property(lambda self: self.term.requires_condition)  # type: ignore[assignment]
    is_quadratic = property(lambda self: self.term.is_quadratic)  # type: ignore[assignment]
    quadratic_anchor = property(lambda self: self.term.quadratic_anchor)  # type: ignore[assignment]
    periodic = property(lambda self: self.term.periodic)  # type: ignore[assignment]
    interaction_radius = property(lambda self: self.term.interaction_radius)  # type: ignore[assignment]
    translation_invariant = property(lambda self: self.term.translation_invariant)  # type: ignore[assignment]

    def _declares_radius(self) -> bool:
        return self.term._declares_radius()

    def resolve_interaction_radius(self, y, x, c=None):
        return self.term.resolve_interaction_radius(y, x, c)

    def _check_term_inputs(self, y, c):
        self.term._check_term_inputs(y, c)

    def energy(self, y, x, c=None):
        return self.scale * self.term.energy(y, x, c)

    def _grad(self, y, x, c):
        return self.scale * self.term._grad(y, x, c)

    def _energy_and_grad(self, y, x, c):
        value, g = self.term._energy_and_grad(y, x, c)
        return self.scale * value, self.scale * g

    def _hessian_vector_product(self, y, x, c, v):
        return self.scale * self.term._hessian_vector_product(y, x, c, v)

    def _curvature(self, y, x, c):
        return self.scale * self.term._curvature(y, x, c)

    def convexity_margin(self, c=None):
        margin = self.term.convexity_margin(c)
        return None if margin is None else self.scale * margin

    def _hessian_structure(self, x, c):
        return self.term._hessian_structure(x, c).scaled(self.scale)

    def curvature_bound(self, height, width, c=None):
        bound = self.term.curvature_bound(height, width, c)
        return None if bound is None else self.scale * bound

    def __mul__(self, scale):
        scaled = Energy.__mul__(self.term, scale)
        if scaled is NotImplemented:
            return NotImplemented
        return ScaledEnergy(self.term, self.scale * scaled.scale)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"{self.scale:g} * {self.term!r}"


def _add(values: Iterator[Tensor]) -> Tensor:
    """Sum without the extra pass that ``sum()``'s integer start costs."""
    total = next(values)
    for value in values:
        total = total + value
    return total


def _add_grad(total: Tensor | None, owned: bool, g: Tensor, fresh: bool, with_energy: bool = False
              ) -> tuple[Tensor, bool]:
    """``total + g``, in place into whichever of the two a term owns (``Energy._owns_grad``)
    instead of a new tensor per term; returns the sum and whether it is owned. ``with_energy``:
    the gradients came with energy values, which may have saved them for autograd (Unary's and
    Pairwise's ``0.5 <y, g>``): then no in place while autograd records."""
    if total is None:
        return g, fresh
    if with_energy and torch.is_grad_enabled() and (g.requires_grad or total.requires_grad):
        return total + g, True
    same = g.shape == total.shape and g.dtype == total.dtype
    if owned and same:
        return total.add_(g), True
    if fresh and same:
        return g.add_(total), True  # IEEE addition commutes: the same values
    return total + g, True


class SumEnergy(Energy, composes="sum"):
    """A flat sum of terms: ``a + b + c`` is one sum of three, indexable by position and name.

    Example:
        >>> import energycrf as ec
        >>> E = ec.energies.Unary() + ec.energies.Pairwise(channels=4)
        >>> E.names, type(E["pairwise"]).__name__
        (['unary', 'pairwise'], 'Pairwise')
    """

    def __init__(self, terms: Iterable[Energy], names: Iterable[str] | None = None):
        super().__init__()
        flat: list[Energy] = []
        flat_names: list[str | None] = []
        given = list(names) if names is not None else None
        terms = list(terms)
        if given is not None and len(given) != len(terms):
            raise ValueError(f"names must have one entry per term ({len(terms)}), got {len(given)}")
        for k, term in enumerate(terms):
            if not isinstance(term, Energy):
                raise TypeError(f"terms[{k}] must be an Energy, got {type(term).__name__}")
            if isinstance(term, SumEnergy):
                flat.extend(term.terms)
                flat_names.extend(term.names)
            else:
                flat.append(term)
                flat_names.append(given[k] if given is not None else None)
        if not flat:
            raise ValueError("a SumEnergy needs at least one term")
        declared = {type(t).__name__ + f"(channels={t.channels})": t.channels for t in flat if t.channels is not None}
        if len(set(declared.values())) > 1:
            raise ValueError(f"the terms of a sum must act on the same number of channels, got {sorted(declared)}")
        self.terms = nn.ModuleList(flat)
        self.names = self._unique([n if n is not None else t.term_name for n, t in zip(flat_names, flat)])

    @staticmethod
    def _unique(names: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        out = []
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError(f"term names must be non-empty strings, got {name!r}")
            if name in seen:
                seen[name] += 1
                candidate = f"{name}_{seen[name]}"
                while candidate in names or candidate in out:
                    seen[name] += 1
                    candidate = f"{name}_{seen[name]}"
                out.append(candidate)
            else:
                seen[name] = 1
                out.append(name)
        return out

    # indexable
    def __len__(self) -> int:
        return len(self.terms)

    def __iter__(self) -> Iterator[Energy]:
        return iter(self.terms)

    def __getitem__(self, key: int | str) -> Energy:
        if isinstance(key, str):
            if key not in self.names:
                raise KeyError(f"no term named {key!r}; terms are {self.names}")
            return self.terms[self.names.index(key)]
        if isinstance(key, int):
            return self.terms[key]
        raise TypeError(f"a sum is indexed by int or str, got {type(key).__name__}")

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, Energy):
            return NotImplemented
        extra = list(other.terms) if isinstance(other, SumEnergy) else [other]
        extra_names = list(other.names) if isinstance(other, SumEnergy) else [other.term_name]
        return SumEnergy(list(self.terms) + extra, self.names + extra_names)

    def __radd__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        if isinstance(other, Energy):
            return SumEnergy([other, *self.terms], [other.term_name, *self.names])
        return NotImplemented

    def __mul__(self, scale):
        # distribute, so the sum stays flat and indexable
        scaled = [Energy.__mul__(t, scale) for t in self.terms]
        if any(s is NotImplemented for s in scaled):
            return NotImplemented
        return SumEnergy(scaled, self.names)

    __rmul__ = __mul__

    # structure
    channels = property(lambda self: next((t.channels for t in self.terms if t.channels is not None), None))  # type: ignore[assignment]
    cond_dim = property(lambda self: next((t.cond_dim for t in self.terms if t.cond_dim is not None), None))  # type: ignore[assignment]
    requires_condition = property(lambda self: any(t.requires_condition for t in self.terms))  # type: ignore[assignment]
    is_quadratic = property(lambda self: all(t.is_quadratic for t in self.terms))  # type: ignore[assignment]
    periodic = property(lambda self: any(t.periodic for t in self.terms))  # type: ignore[assignment]

    @property
    def quadratic_anchor(self) -> str | None:  # type: ignore[override]
        """The terms' common anchor, or ``None`` when they differ."""
        anchors = {t.quadratic_anchor for t in self.terms}
        return anchors.pop() if len(anchors) == 1 else None

    @property
    def translation_invariant(self) -> bool:  # type: ignore[override]
        """Every term's, and with global coupling every term periodic: a zero-boundary term is the
        same stencil only at sites farther than its radius from the border, and global coupling
        (a circular long-range term) leaves no site of which the whole stencil is that far."""
        if not all(t.translation_invariant for t in self.terms):
            return False
        return self.interaction_radius is not None or all(t.periodic for t in self.terms)

    @property
    def interaction_radius(self) -> int | None:  # type: ignore[override]
        radii = [t.interaction_radius for t in self.terms]
        return None if any(r is None for r in radii) else max(radii)

    def _declares_radius(self) -> bool:
        return all(t._declares_radius() for t in self.terms)

    def resolve_interaction_radius(self, y, x, c=None):
        radii = [t.resolve_interaction_radius(y, x, c) for t in self.terms]
        return None if any(r is None for r in radii) else max(radii)

    def _check_term_inputs(self, y, c):
        for term in self.terms:
            term._check_term_inputs(y, c)

    # values
    def energy(self, y, x, c=None):
        shared = shared_convolutions(self.terms, y)  # one convolution for terms that offer the hook
        return _add(t._shared_energy(y, x, c, **shared[k]) if k in shared else t.energy(y, x, c)
                    for k, t in enumerate(self.terms))

    _owns_grad = True

    def _grad(self, y, x, c):
        return self._energy_and_grad(y, x, c, with_energy=False)[1]

    def _energy_and_grad(self, y, x, c, with_energy=True):
        shared = shared_convolutions(self.terms, y)
        value, total, owned = None, None, False
        for k, t in enumerate(self.terms):
            if k in shared:
                v, g = t._energy_and_grad(y, x, c, with_energy, **shared.pop(k))
            elif with_energy:
                v, g = t._energy_and_grad(y, x, c)
            else:
                v, g = None, t._grad(y, x, c)
            if with_energy:
                value = v if value is None else value + v
            total, owned = _add_grad(total, owned, g, t._owns_grad, with_energy)
            del g  # the running sum holds what is needed: lower peak memory
        return value, total

    def _hessian_vector_product(self, y, x, c, v):
        total, owned = None, False
        for t in self.terms:
            total, owned = _add_grad(total, owned, t._hessian_vector_product(y, x, c, v), t._owns_grad)
        return total

    def _hessian_structure(self, x, c):
        return HessianStructure.sum([t._hessian_structure(x, c) for t in self.terms])

    def _curvature(self, y, x, c):
        return _add(t._curvature(y, x, c) for t in self.terms)

    def breakdown(self, y, x, c=None):
        c = self.validate(y, x, c)
        return {name: t.energy(y, x, c) for name, t in zip(self.names, self.terms)}

    def convexity_margin(self, c=None):
        margins = [t.convexity_margin(c) for t in self.terms]
        return None if any(m is None for m in margins) else float(sum(margins))

    def curvature_bound(self, height, width, c=None):
        bounds = [t.curvature_bound(height, width, c) for t in self.terms]
        return None if any(b is None for b in bounds) else float(sum(bounds))

    def __repr__(self) -> str:
        lines = [f"  {name}: {term!r}".replace("\n", "\n  ") for name, term in zip(self.names, self.terms)]
        return "SumEnergy(\n" + ",\n".join(lines) + "\n)"
