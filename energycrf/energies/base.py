r"""The energy base class, flat sums and scalings, and the autograd fallbacks.

An energy maps a state ``y`` ``[B, C, H, W]``, an observation ``x`` (same shape) and an
optional condition ``c`` (pooled ``[B, D]`` or tokens ``[B, L, D]``) to one value per
sample, ``E(y, x, c) -> Tensor[B]``. A new term needs only :meth:`Energy.energy`; the
gradient, the per-site curvature blocks and the interaction radius have fallbacks
(``torch.func``) that the built-in terms override analytically.

Per-site curvature blocks (the solvers' one mechanism). At a reference point ``y`` a term
gives its gradient ``g`` and blocks ``A_i`` (``C x C``, positive semi-definite) such that
for any set ``S`` of sites that share no term (pairwise farther apart than the
interaction radius)

.. math::

    E(y + \delta_S) \le E(y) + g^\top \delta + \tfrac12 \sum_{i \in S} \delta_i^\top A_i \delta_i .

Quadratic terms give the exact diagonal Hessian blocks (equality); the concave
Field-of-Experts term gives zero (the tangent bound); half-quadratic experts give
:math:`\rho'(u)/u`-weighted outer products of filter taps.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from ._validation import check_condition, check_latent, check_pair
from .colouring import colour_classes

__all__ = [
    "Energy",
    "SumEnergy",
    "ScaledEnergy",
    "EnergyWarning",
    "IllPosedEnergyError",
]


class EnergyWarning(UserWarning):
    """An energy may be ill-posed (unbounded below) or its well-posedness is unknown."""


class IllPosedEnergyError(ValueError):
    """Raised by :meth:`Energy.check_well_posed` with ``on_fail="raise"``."""


def _sample_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product of two ``[B, ...]`` tensors, ``Tensor[B]``."""
    return (a * b).flatten(1).sum(1)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Energy(nn.Module):
    r"""Base class of every energy term: ``E(y, x, c) -> Tensor[B]``.

    Subclasses implement :meth:`energy`. Optional analytic overrides: ``_grad``
    (:math:`\nabla_y E`), ``_curvature`` (per-site blocks :math:`A_i`), the attributes
    ``interaction_radius`` (int, or ``None`` for global coupling), ``periodic``,
    ``is_quadratic`` and ``translation_invariant`` (the Hessian is the same stencil at every
    site farther than ``interaction_radius`` from the border: it depends on neither the site
    nor ``x``, only, per sample, on ``c``), and :meth:`convexity_margin`.

    Attributes:
        channels: the number of channels the term requires, or ``None`` for any.
        cond_dim: the condition width ``D`` the term reads, or ``None`` if it ignores ``c``.
        requires_condition: whether ``c`` must be given.

    Example:
        >>> import torch, energycrf as ec
        >>> class Smooth(ec.Energy):
        ...     def energy(self, y, x, c=None):
        ...         return ((y[..., 1:] - y[..., :-1]) ** 2).sum((1, 2, 3))
        >>> E = ec.energies.Unary() + Smooth()
        >>> y = torch.zeros(2, 1, 4, 4); E(y, y).shape
        torch.Size([2])
    """

    channels: int | None = None
    cond_dim: int | None = None
    requires_condition: bool = False
    is_quadratic: bool = False
    periodic: bool = False
    interaction_radius: int | None = None
    translation_invariant: bool = False
    #: For a quadratic term, where its gradient is a product with its Hessian from: ``"zero"`` when
    #: :math:`\nabla E(y) = H y` (a homogeneous quadratic form, e.g. Pairwise), ``"data"`` when
    #: :math:`\nabla E(y) = H (y - x)` (minimised at the data, e.g. Unary); ``None`` (neither, or not
    #: declared). A solver then gets the quadratic part's gradient at ``y = x`` as one product
    #: (:func:`energycrf.solvers.quadratic.gradient_at_data`).
    quadratic_anchor: str | None = None
    #: ``_grad``, ``_energy_and_grad`` and ``_hessian_vector_product`` return a tensor of their own
    #: (no view or alias of an input; from ``_grad`` and ``_hessian_vector_product`` not saved by
    #: autograd, from ``_energy_and_grad`` possibly saved for the value), which a sum may add to in
    #: place.
    _owns_grad: bool = False

    # ----------------------------------------------------------------- the one method
    def energy(self, y: Tensor, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The energy of each sample, ``Tensor[B]``. The one method a new term must write."""
        raise NotImplementedError(f"{type(self).__name__} must implement energy(y, x, c=None) -> Tensor[B]")

    # ----------------------------------------------------------------- public, validated
    def forward(self, y: Tensor, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Validate the inputs and return :meth:`energy` (``Tensor[B]``)."""
        c = self.validate(y, x, c)
        return self.energy(y, x, c)

    def grad(self, y: Tensor, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""The gradient :math:`\nabla_y E(y, x, c)`, a tensor like ``y``."""
        c = self.validate(y, x, c)
        return self._grad(y, x, c)

    def energy_and_grad(self, y: Tensor, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""``(E(y, x, c), grad E(y, x, c))`` from one evaluation: ``Tensor[B]`` and a tensor like ``y``.

        Equal to ``(E(y, x, c), E.grad(y, x, c))``; the built-in terms share their filter
        responses and messages between the two, a term with only :meth:`energy` gets both
        from one autograd pass, other terms fall back to the two calls.
        """
        c = self.validate(y, x, c)
        return self._energy_and_grad(y, x, c)

    def curvature(self, y: Tensor, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Per-site curvature blocks :math:`A_i`, ``Tensor[B, H, W, C, C]`` (see the module docstring)."""
        c = self.validate(y, x, c)
        return self._curvature(y, x, c)

    def breakdown(self, y: Tensor, x: Tensor, c: Tensor | None = None) -> dict[str, Tensor]:
        """Each term's energy by name (a single term gives one entry)."""
        c = self.validate(y, x, c)
        return {self.term_name: self.energy(y, x, c)}

    def validate(self, y: Tensor, x: Tensor, c: Tensor | None = None) -> Tensor | None:
        """Check ``y``, ``x`` and ``c`` against each other and against this term; return ``c``."""
        check_pair(y, x)
        c = check_condition(c, y.shape[0], y.dtype, y.device)
        self._check_term_inputs(y, c)
        return c

    def check_operand(self, y: Tensor) -> Tensor:
        """Check the input of a public operator (``message``, ``score``, ...): a floating
        ``[B, C, H, W]`` tensor with this term's channels and a size it can act on."""
        check_latent("y", y)
        self._check_channels(y)
        self._check_spatial(y.shape[-2], y.shape[-1])
        return y

    def _check_channels(self, y: Tensor) -> None:
        if self.channels is not None and y.shape[1] != self.channels:
            raise ValueError(
                f"y has {y.shape[1]} channels but {type(self).__name__} was built for channels={self.channels} "
                f"(y shape {tuple(y.shape)})"
            )

    def _check_term_inputs(self, y: Tensor, c: Tensor | None) -> None:
        name = type(self).__name__
        self._check_channels(y)
        if c is None:
            if self.requires_condition:
                raise ValueError(f"{name} is conditioned: pass c of shape [B, {self.cond_dim}] or [B, L, {self.cond_dim}]")
        elif self.cond_dim is not None and c.shape[-1] != self.cond_dim:
            raise ValueError(
                f"c must have feature size {self.cond_dim} in its last dimension for {name}, got shape {tuple(c.shape)}"
            )
        self._check_spatial(y.shape[-2], y.shape[-1])

    def _check_spatial(self, height: int, width: int) -> None:
        """Terms with size limits (circular windows) override this."""

    # ----------------------------------------------------------------- fallbacks
    def _grad(self, y: Tensor, x: Tensor, c: Tensor | None) -> Tensor:
        """Autograd fallback: ``torch.func.grad`` of the summed energy (samples are independent)."""
        return torch.func.grad(lambda v: self.energy(v, x, c).sum())(y)

    def _energy_and_grad(self, y: Tensor, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        """Fallback: one ``torch.func.grad_and_value`` pass for a term without an analytic
        gradient, else :meth:`energy` and ``_grad``."""
        if type(self)._grad is Energy._grad:

            def total(v: Tensor) -> tuple[Tensor, Tensor]:
                value = self.energy(v, x, c)
                return value.sum(), value

            g, (_, value) = torch.func.grad_and_value(total, has_aux=True)(y)
            return value, g
        return self.energy(y, x, c), self._grad(y, x, c)

    def _hessian_vector_product(self, y: Tensor, x: Tensor, c: Tensor | None, v: Tensor) -> Tensor:
        """:math:`\\nabla^2_y E(y)\\, v` (constant in ``y`` for quadratic terms). Fallback: forward-mode
        differentiation of ``_grad``; the built-in quadratic terms apply their Hessian directly."""
        return torch.func.jvp(lambda u: self._grad(u, x, c), (y,), (v,))[1]

    def _hessian_operator(self, x: Tensor, c: Tensor | None) -> "HessianOperator":
        """A quadratic term's (constant) Hessian on inputs like ``x``, prepared once for repeated
        products. Fallback: :meth:`_hessian_vector_product` at ``x``; the built-in quadratic
        terms split off their diagonal, so that a sum applies all its diagonals in one pass."""
        return HessianOperator.of_product(lambda v: self._hessian_vector_product(x, x, c, v))

    def _curvature(self, y: Tensor, x: Tensor, c: Tensor | None) -> Tensor:
        """Fallback: the exact diagonal ``C x C`` Hessian blocks, by Hessian-vector products.

        One product per colour class and channel: for a probe that is one on the sites of a
        colour class (channel ``k``), the product restricted to those sites is column ``k``
        of their diagonal blocks, since sites of one class share no term.
        For quadratic terms this is the exact majoriser; solvers safeguard the others.
        """
        B, C, H, W = y.shape
        radius = self.resolve_interaction_radius(y, x, c)
        masks = colour_classes(H, W, H + W if radius is None else radius, self.periodic, device=y.device)
        _, hvp = torch.func.vjp(lambda v: self._grad(v, x, c), y)
        blocks = y.new_zeros(B, H, W, C, C)
        for mask in masks:
            mask = mask.to(y.dtype)
            for k in range(C):
                probe = torch.zeros_like(y)
                probe[:, k] = mask
                (column,) = hvp(probe)
                blocks[..., :, k] += (column * mask).permute(0, 2, 3, 1)
        return blocks

    def resolve_interaction_radius(self, y: Tensor, x: Tensor, c: Tensor | None = None) -> int | None:
        """The declared interaction radius, or one estimated by :meth:`estimate_interaction_radius`."""
        if self._declares_radius():
            return self.interaction_radius
        return self.estimate_interaction_radius(y, x, c)

    def _declares_radius(self) -> bool:
        if "interaction_radius" in self.__dict__:
            return True
        return any("interaction_radius" in vars(k) for k in type(self).__mro__ if k not in (Energy,))

    @torch.no_grad()
    def estimate_interaction_radius(self, y: Tensor, x: Tensor, c: Tensor | None = None) -> int:
        """Estimate the coupling radius of a term that declares none, from Hessian sparsity.

        Hessian columns of nine sites (the corners, the edge midpoints and the centre) are
        probed at ``y`` and at a random nearby point; the radius is the largest Chebyshev
        distance from a probed site to a site its column touches. The corners see every
        coupling of a translation-invariant term, wrap-around (``torch.roll``) couplings
        included, which then count with their distance across the image; a radius of
        ``max(H, W) - 1`` or more makes every site a colour class of its own, which is
        exact but slow. A term that is not translation invariant can couple interior sites
        that none of the probes touches: such a term must declare ``interaction_radius``
        (and ``periodic``) itself, which also skips this probe.
        """
        y1, x1 = y[:1], x[:1]
        c1 = None if c is None else c[:1]
        _, C, H, W = y1.shape
        sites = {(h, w) for h in (0, H // 2, H - 1) for w in (0, W // 2, W - 1)}
        gen = torch.Generator(device="cpu").manual_seed(0)
        points = [y1, y1 + 0.1 * torch.randn(y1.shape, generator=gen, dtype=y1.dtype).to(y1.device)]
        rows = torch.arange(H, device=y.device)[:, None]
        cols = torch.arange(W, device=y.device)[None, :]
        radius = 0
        with torch.enable_grad():
            for point in points:
                _, hvp = torch.func.vjp(lambda v: self._grad(v, x1, c1), point)
                for h, w in sites:
                    for k in range(C):
                        probe = torch.zeros_like(point)
                        probe[0, k, h, w] = 1
                        column = hvp(probe)[0].detach()
                        touched = column[0].abs().amax(0) > 1e-12 * (1 + float(column.abs().max()))
                        if bool(touched.any()):
                            dist = torch.maximum((rows - h).abs(), (cols - w).abs())
                            radius = max(radius, int(dist[touched].max()))
        return radius

    # ----------------------------------------------------------------- well-posedness
    def convexity_margin(self, c: Tensor | None = None) -> float | None:
        r"""A lower bound on the smallest eigenvalue of the Hessian of :math:`E` in ``y``.

        Positive means strongly convex with that modulus (a unique minimiser exists).
        ``None`` means unknown (a user's term that does not say).
        """
        return None

    def curvature_bound(self, height: int, width: int, c: Tensor | None = None) -> float | None:
        r"""An upper bound on the largest eigenvalue of the Hessian of :math:`E` in ``y`` on
        ``height x width`` images (what :meth:`convexity_margin` is to the smallest).

        Together they bound the Hessian's spectrum (the interval of the Chebyshev
        preconditioner, ``precondition="chebyshev"``). ``None`` means unknown.
        """
        return None

    def check_well_posed(self, c: Tensor | None = None, on_fail: str = "warn") -> float | None:
        r"""Check :math:`2 w - \sum_m \|C_m\|^2 > 0` (generally: a positive convexity margin).

        Args:
            c: the condition, for terms whose curvature depends on it.
            on_fail: ``"warn"`` (an :class:`EnergyWarning`), ``"raise"``
                (:class:`IllPosedEnergyError`, also when the margin is unknown) or ``"ignore"``.

        Returns:
            The margin, or ``None`` when unknown.
        """
        if on_fail not in ("warn", "raise", "ignore"):
            raise ValueError(f"on_fail must be one of ('warn', 'raise', 'ignore'), got {on_fail!r}")
        margin = self.convexity_margin(c)
        if on_fail == "ignore":
            return margin
        if margin is None:
            message = (
                f"the convexity margin of {type(self).__name__} is unknown (a term does not report it): "
                "E may be unbounded below; implement convexity_margin() on custom terms to check it"
            )
        elif margin <= 0:
            message = (
                f"{type(self).__name__} may be unbounded below: convexity margin {margin:.4g} <= 0 "
                "(unary curvature 2w does not dominate the experts' negative curvature sum_m ||C_m||^2). "
                "Increase the unary weight or shrink the filters (filter_constraint='normalize')"
            )
        else:
            return margin
        if on_fail == "raise":
            raise IllPosedEnergyError(message)
        warnings.warn(message, EnergyWarning, stacklevel=2)
        return margin

    # ----------------------------------------------------------------- composition
    @property
    def term_name(self) -> str:
        """The default name of this term inside a sum (snake case of the class name)."""
        return _snake(type(self).__name__)

    def __add__(self, other: object) -> SumEnergy:
        if isinstance(other, (int, float)) and other == 0:
            return SumEnergy([self])
        if not isinstance(other, Energy):
            return NotImplemented
        return SumEnergy([self, other])

    def __radd__(self, other: object) -> SumEnergy:
        if isinstance(other, (int, float)) and other == 0:  # sum([...]) starts from 0
            return SumEnergy([self])
        return NotImplemented

    def __mul__(self, scale: object) -> Energy:
        if isinstance(scale, Tensor) and scale.numel() == 1:
            scale = float(scale)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            return NotImplemented
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"an energy can only be scaled by a positive finite number, got {scale!r}")
        return ScaledEnergy(self, float(scale))

    __rmul__ = __mul__


class HessianOperator:
    """``(s H + t I) v = (s diagonal + t) * v + rest(v, s)``: a quadratic term's Hessian with its
    diagonal split off, applied with a scale ``s`` and a shift ``t`` (numbers) folded in where they
    cost no pass (``diagonal``: a tensor broadcastable to ``v``, or ``None``; ``rest(v, s)``: ``s``
    times the rest's product, a new tensor, or ``None`` for a diagonal Hessian). The result is
    always a new tensor."""

    def __init__(self, diagonal: Tensor | None, rest, parts: list["HessianOperator"] | None = None):
        self.diagonal, self.rest = diagonal, rest
        self.parts = parts  # a sum's operators, one per term (:meth:`sum`), else None
        self._shifted: dict[tuple[float, float], Tensor] = {}  # s diagonal + t by (s, t)

    def __call__(self, v: Tensor, scale: float = 1.0, shift: float = 0.0) -> Tensor:
        if self.rest is None:
            if self.diagonal is None:
                return v * shift if shift != 0 else torch.zeros_like(v)
            return v * (scale * self.diagonal + shift)
        out = self.rest(v, scale)
        if shift == 0:
            return out if self.diagonal is None else out.addcmul_(self.diagonal, v, value=scale)
        if self.diagonal is None:
            return out.add_(v, alpha=shift)
        return out.addcmul_(self._shifted_diagonal(scale, shift), v)  # one pass: the shift joins the (small) diagonal

    def _shifted_diagonal(self, scale: float, shift: float) -> Tensor:
        """``scale * diagonal + shift``, kept per pair (a polynomial applies the same ones again);
        made afresh while autograd records or inside a ``torch.func`` transform (whose tensors
        belong to it)."""
        if torch.is_grad_enabled() or torch._C._functorch.maybe_current_level() is not None:
            return scale * self.diagonal + shift
        key = (float(scale), float(shift))
        kept = self._shifted.get(key)
        if kept is None:
            kept = self._shifted[key] = scale * self.diagonal + shift
        return kept

    @staticmethod
    def of_product(product) -> "HessianOperator":
        """The operator of a bare product ``v -> H v`` (no diagonal split off; the scale costs a pass)."""
        return HessianOperator(None, lambda v, s: torch.mul(product(v), s))

    def scaled(self, scale: float) -> "HessianOperator":
        diagonal = None if self.diagonal is None else scale * self.diagonal
        rest = None if self.rest is None else (lambda v, s: self.rest(v, scale * s))
        return HessianOperator(diagonal, rest)

    @staticmethod
    def sum(operators: list["HessianOperator"]) -> "HessianOperator":
        """The sum: diagonals added once, the rests' products added into the first one's (the
        operators stay available as :attr:`parts`)."""
        diagonal = None
        for op in operators:
            if op.diagonal is not None:
                diagonal = op.diagonal if diagonal is None else diagonal + op.diagonal
        rests = [op.rest for op in operators if op.rest is not None]
        if len(rests) <= 1:
            return HessianOperator(diagonal, rests[0] if rests else None, list(operators))

        def rest(v: Tensor, scale: float) -> Tensor:
            out = rests[0](v, scale)
            for other in rests[1:]:
                out.add_(other(v, scale))
            return out

        return HessianOperator(diagonal, rest, list(operators))


class ScaledEnergy(Energy):
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

    def _hessian_operator(self, x, c):
        return self.term._hessian_operator(x, c).scaled(self.scale)

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


class SumEnergy(Energy):
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
        from .fused import shared_convolutions

        shared = shared_convolutions(self.terms, y)  # one convolution for FoE filters and a local pairwise window
        return _add(t._shared_energy(y, x, c, **shared[k]) if k in shared else t.energy(y, x, c)
                    for k, t in enumerate(self.terms))

    _owns_grad = True

    def _grad(self, y, x, c):
        return self._energy_and_grad(y, x, c, with_energy=False)[1]

    def _energy_and_grad(self, y, x, c, with_energy=True):
        from .fused import shared_convolutions

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

    def _hessian_operator(self, x, c):
        return HessianOperator.sum([t._hessian_operator(x, c) for t in self.terms])

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
