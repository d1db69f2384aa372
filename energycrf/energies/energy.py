r"""The energy base class and its autograd fallbacks.

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

Flat sums and scalings (``a + b``, ``2.0 * a``) are :mod:`energycrf.energies.composite`'s; this
module builds them through :attr:`Energy._composites` (filled in by that module), so it imports
none of it.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ClassVar

import torch
from torch import Tensor, nn

from ._validation import check_condition, check_latent, check_pair
from .colouring import colour_classes
from .fused import ConvolutionRequest
from .hessian import HessianStructure

__all__ = ["Energy", "EnergyWarning", "IllPosedEnergyError", "unchecked_values"]


class EnergyWarning(UserWarning):
    """An energy may be ill-posed (unbounded below) or its well-posedness is unknown."""


class IllPosedEnergyError(ValueError):
    """Raised by :meth:`Energy.check_well_posed` with ``on_fail="raise"``."""


def _sample_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product of two ``[B, ...]`` tensors, ``Tensor[B]``."""
    return (a * b).flatten(1).sum(1)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_CHECK_VALUES: ContextVar[bool] = ContextVar("energycrf_check_values", default=True)


@contextmanager
def unchecked_values() -> Iterator[None]:
    """Inside, ``E(y, x)`` and ``E.energy_and_grad`` do not check their values for non-finite
    entries: for a caller that judges every value itself (the solvers report a non-finite energy
    as a diverged sample), which would otherwise get a warning per evaluation."""
    token = _CHECK_VALUES.set(False)
    try:
        yield
    finally:
        _CHECK_VALUES.reset(token)


def _finite_or_warn(energy: "Energy", value: Tensor, y: Tensor, x: Tensor, stacklevel: int) -> Tensor:
    """``value``, with an :class:`EnergyWarning` when some sample's energy is not finite: never a
    silent NaN. At finite inputs that is an overflow of the dtype (``E(1e20 * x, x)`` in float32:
    the unary term alone exceeds its largest number). One ``[B]`` reduction per call; the inputs
    are inspected only when it fails."""
    if not _CHECK_VALUES.get():
        return value
    finite = torch.isfinite(value)
    if bool(finite.all()):
        return value
    bad = (~finite).nonzero().flatten().tolist()
    if not (bool(torch.isfinite(y).all()) and bool(torch.isfinite(x).all())):
        why = "y or x holds non-finite values"
    else:
        big = float(torch.maximum(y.abs().amax(), x.abs().amax()))
        why = (f"the inputs are finite (max |y|, |x| = {big:.3g}), so the value overflows {value.dtype} "
               f"(largest {torch.finfo(value.dtype).max:.3g}); evaluate in float64 or rescale")
    warnings.warn(f"{type(energy).__name__} is not finite for sample(s) {bad}: {why}", EnergyWarning, stacklevel=stacklevel)
    return value


class Energy(nn.Module):
    r"""Base class of every energy term: ``E(y, x, c) -> Tensor[B]``.

    Subclasses implement :meth:`energy`. Optional analytic overrides: ``_grad``
    (:math:`\nabla_y E`), ``_curvature`` (per-site blocks :math:`A_i`), the attributes
    ``interaction_radius`` (int, or ``None`` for global coupling), ``periodic``,
    ``is_quadratic`` and ``translation_invariant`` (the Hessian is the same stencil at every
    site farther than ``interaction_radius`` from the border: it depends on neither the site
    nor ``x``, only, per sample, on ``c``), and :meth:`convexity_margin`.

    Two optional hooks serve sums and solvers:

    - ``_convolution_request(y)``: a term that correlates ``y`` with a filter bank may return a
      :class:`~energycrf.energies.fused.ConvolutionRequest` (window size, boundary, the bank,
      host or guest); a sum then computes it in one convolution with another term's bank and
      calls the term's ``_shared_energy(y, x, c, convolved=u, bank=J)`` and
      ``_energy_and_grad(y, x, c, with_energy, convolved=u, bank=J)`` with its output channels
      ``u`` (:mod:`energycrf.energies.fused`). Default ``None``: no sharing.
    - ``_hessian_structure(x, c)``: a quadratic term's constant Hessian as a
      :class:`~energycrf.energies.hessian.HessianStructure` (a diagonal and the rest's product),
      which a sum composes; default the bare product ``_hessian_vector_product``.

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
    #: (:func:`energycrf.solvers.start.gradient_at_data`).
    quadratic_anchor: str | None = None
    #: ``_grad``, ``_energy_and_grad`` and ``_hessian_vector_product`` return a tensor of their own
    #: (no view or alias of an input; from ``_grad`` and ``_hessian_vector_product`` not saved by
    #: autograd, from ``_energy_and_grad`` possibly saved for the value), which a sum may add to in
    #: place.
    _owns_grad: bool = False
    #: The classes ``a + b`` and ``s * a`` build, by role (``"sum"``, ``"scaled"``): a subclass
    #: declares its role (``class SumEnergy(Energy, composes="sum")``), so that this module imports
    #: no module of theirs (:mod:`energycrf.energies.composite`).
    _composites: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, composes: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if composes is not None:
            Energy._composites[composes] = cls

    # ----------------------------------------------------------------- the one method
    def energy(self, y: Tensor, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The energy of each sample, ``Tensor[B]``. The one method a new term must write."""
        raise NotImplementedError(f"{type(self).__name__} must implement energy(y, x, c=None) -> Tensor[B]")

    # ----------------------------------------------------------------- public, validated
    def forward(self, y: Tensor, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Validate the inputs and return :meth:`energy` (``Tensor[B]``)."""
        c = self.validate(y, x, c)
        return _finite_or_warn(self, self.energy(y, x, c), y, x, stacklevel=5)  # the caller of E(y, x)

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
        value, g = self._energy_and_grad(y, x, c)
        return _finite_or_warn(self, value, y, x, stacklevel=3), g

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

    def _hessian_structure(self, x: Tensor, c: Tensor | None) -> HessianStructure:
        """A quadratic term's (constant) Hessian on inputs like ``x`` as its diagonal and the rest's
        product. Fallback: the bare product :meth:`_hessian_vector_product` at ``x``; the built-in
        quadratic terms split off their diagonal, so that a sum applies all its diagonals in one pass."""
        return HessianStructure.of_product(lambda v: self._hessian_vector_product(x, x, c, v))

    def _convolution_request(self, y: Tensor) -> ConvolutionRequest | None:
        """The filter bank this term would share with others of a sum (see the class docstring);
        ``None`` (the default): the term computes its own."""
        return None

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

    def __add__(self, other: object) -> Energy:
        if isinstance(other, (int, float)) and other == 0:
            return Energy._composites["sum"]([self])
        if not isinstance(other, Energy):
            return NotImplemented
        return Energy._composites["sum"]([self, other])

    def __radd__(self, other: object) -> Energy:
        if isinstance(other, (int, float)) and other == 0:  # sum([...]) starts from 0
            return Energy._composites["sum"]([self])
        return NotImplemented

    def __mul__(self, scale: object) -> Energy:
        if isinstance(scale, Tensor) and scale.numel() == 1:
            scale = float(scale)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            return NotImplemented
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"an energy can only be scaled by a positive finite number, got {scale!r}")
        return Energy._composites["scaled"](self, float(scale))

    __rmul__ = __mul__
