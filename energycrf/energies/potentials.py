r"""Expert potentials :math:`\rho(u) = -\log\phi(u)` of the Field-of-Experts term.

A potential gives :math:`\rho` (elementwise), :math:`\rho'`, a majoriser weight
:math:`a(u) \ge 0` with

.. math::

    \rho(u + \Delta) \le \rho(u) + \rho'(u)\,\Delta + \tfrac12 a(u)\,\Delta^2 \quad \forall \Delta,

and ``min_curvature``, a lower bound on :math:`\rho''` (for the well-posedness margin).
A researcher's new expert subclasses :class:`Potential` and writes ``rho``; ``rho_prime``
falls back to autograd, and ``majorizer_weight`` to the half-quadratic weight
:math:`\rho'(u)/u` (valid when :math:`\rho(\sqrt{s})` is concave in :math:`s`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_positive

__all__ = ["Potential", "ReLUExpert", "StudentT", "Charbonnier", "Huber", "PiecewiseLinear"]


class Potential(nn.Module):
    """Base class of expert potentials ``rho``."""

    #: a lower bound on rho'' over the reals (None: unknown)
    min_curvature: float | None = None

    def rho(self, u: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement rho(u)")

    def rho_prime(self, u: Tensor) -> Tensor:
        """:math:`\\rho'(u)`; autograd fallback."""
        return torch.func.grad(lambda v: self.rho(v).sum())(u)

    def majorizer_weight(self, u: Tensor) -> Tensor:
        r"""Half-quadratic weight :math:`\rho'(u)/u` (its limit :math:`\rho''(0)` at ``u = 0``)."""
        small = u.abs() < 1e-6
        safe = torch.where(small, torch.ones_like(u), u)
        at_zero = torch.func.grad(lambda v: self.rho_prime(v).sum())(torch.zeros_like(u))
        return torch.where(small, at_zero, self.rho_prime(safe) / safe)

    def forward(self, u: Tensor) -> Tensor:
        return self.rho(u)


class ReLUExpert(Potential):
    r"""The paper's expert (eq. 10): :math:`\phi(u) = e^{u^2/2}` for :math:`u > 0`, :math:`\varepsilon` otherwise.

    :math:`\rho(u) = -\tfrac12 \mathrm{relu}(u)^2` for :math:`u > 0` and :math:`-\log\varepsilon`
    for :math:`u \le 0` (continuous only for :math:`\varepsilon = 1`);
    :math:`\rho'(u) = -\mathrm{relu}(u)`, so :math:`\omega = \partial\log\phi = \mathrm{relu}`
    (eq. 16). Concave for :math:`\varepsilon = 1`: the tangent bound holds (majoriser weight 0).
    With :math:`\varepsilon \ne 1` the jump at 0 breaks that bound; gradients are unaffected.
    """

    min_curvature = -1.0

    def __init__(self, eps: float = 1.0):
        super().__init__()
        check_positive("eps", eps, allow_tensor=False)
        self.eps = float(eps)

    def rho(self, u):
        positive = -0.5 * F.relu(u) ** 2
        if self.eps == 1.0:
            return positive
        return torch.where(u > 0, positive, torch.full_like(u, -math.log(self.eps)))

    def rho_prime(self, u):
        return -F.relu(u)

    def majorizer_weight(self, u):
        return torch.zeros_like(u)

    def extra_repr(self):
        return f"eps={self.eps:g}"


class StudentT(Potential):
    r"""Student-t expert :math:`\rho(u) = \alpha \log(1 + u^2/2)` (Roth and Black's Field of Experts).

    :math:`\rho'(u) = \alpha u / (1 + u^2/2)`, :math:`\min \rho'' = -\alpha/8` (at :math:`u^2 = 6`),
    half-quadratic weight :math:`\alpha / (1 + u^2/2)`.

    With ``num_experts = M`` every expert has its own weight :math:`\alpha_m` (acting on dimension
    1 of the responses ``[B, M, H, W]``), the per-filter weights of a learned Field of Experts
    (Chen et al.'s opt-MRF); with ``learnable=True`` the weights are a parameter,
    ``log_alpha`` (so they stay positive). With neither, ``alpha`` is a plain float.

    Args:
        alpha: the (starting) weight, positive.
        num_experts: ``M`` (own weights per expert) or ``None`` (one shared weight).
        learnable: make the weight(s) a parameter.
    """

    def __init__(self, alpha: float = 1.0, num_experts: int | None = None, learnable: bool = False):
        super().__init__()
        check_positive("alpha", alpha, allow_tensor=False)
        if num_experts is not None and (isinstance(num_experts, bool) or not isinstance(num_experts, int)
                                        or num_experts < 1):
            raise ValueError(f"num_experts: expected None or an int >= 1, got {num_experts!r}")
        if not isinstance(learnable, bool):
            raise TypeError(f"learnable: expected a bool, got {type(learnable).__name__}")
        self.num_experts, self.learnable = num_experts, learnable
        self.alpha = float(alpha)  # the starting weight (the weight itself when nothing is learned or per expert)
        if num_experts is not None or learnable:
            log_alpha = torch.full(() if num_experts is None else (num_experts,), math.log(self.alpha))
            if learnable:
                self.log_alpha = nn.Parameter(log_alpha)
            else:
                self.register_buffer("log_alpha", log_alpha)

    def _weight(self, u: Tensor) -> Tensor | float:
        """:math:`\alpha` shaped to broadcast against the responses ``u`` (per expert along dimension 1)."""
        if not hasattr(self, "log_alpha"):
            return self.alpha
        a = self.log_alpha.exp().to(dtype=u.dtype, device=u.device)
        if self.num_experts is None:
            return a
        if u.dim() < 2 or u.shape[1] != self.num_experts:
            raise ValueError(f"u: expected responses [B, {self.num_experts}, ...] (num_experts={self.num_experts}), "
                             f"got shape {tuple(u.shape)}")
        return a.view(1, -1, *([1] * (u.dim() - 2)))

    @property
    def min_curvature(self):  # type: ignore[override]
        if not hasattr(self, "log_alpha"):
            return -self.alpha / 8
        return -float(self.log_alpha.detach().exp().max()) / 8

    def rho(self, u):
        return self._weight(u) * torch.log1p(0.5 * u**2)

    def rho_prime(self, u):
        return self._weight(u) * u / (1 + 0.5 * u**2)

    def majorizer_weight(self, u):
        return self._weight(u) / (1 + 0.5 * u**2)

    def extra_repr(self):
        if not hasattr(self, "log_alpha"):
            return f"alpha={self.alpha:g}"
        experts = "shared" if self.num_experts is None else self.num_experts
        return f"alpha={self.alpha:g} (start), experts={experts}, learnable={self.learnable}"


class Charbonnier(Potential):
    r"""Charbonnier (smooth L1) expert :math:`\rho(u) = \sqrt{u^2 + \epsilon^2} - \epsilon`; convex.

    Half-quadratic weight :math:`1/\sqrt{u^2 + \epsilon^2}`.
    """

    min_curvature = 0.0

    def __init__(self, eps: float = 0.1):
        super().__init__()
        check_positive("eps", eps, allow_tensor=False)
        self.eps = float(eps)

    def rho(self, u):
        return torch.sqrt(u**2 + self.eps**2) - self.eps

    def rho_prime(self, u):
        return u / torch.sqrt(u**2 + self.eps**2)

    def majorizer_weight(self, u):
        return 1 / torch.sqrt(u**2 + self.eps**2)

    def extra_repr(self):
        return f"eps={self.eps:g}"


class Huber(Potential):
    r"""Huber expert: :math:`u^2/2` for :math:`|u| \le \delta`, :math:`\delta(|u| - \delta/2)` beyond; convex.

    Half-quadratic weight :math:`\min(1, \delta/|u|)`.
    """

    min_curvature = 0.0

    def __init__(self, delta: float = 0.1):
        super().__init__()
        check_positive("delta", delta, allow_tensor=False)
        self.delta = float(delta)

    def rho(self, u):
        a = u.abs()
        return torch.where(a <= self.delta, 0.5 * u**2, self.delta * (a - 0.5 * self.delta))

    def rho_prime(self, u):
        return u.clamp(-self.delta, self.delta)

    def majorizer_weight(self, u):
        return torch.clamp(self.delta / u.abs().clamp_min(1e-30), max=1.0)

    def extra_repr(self):
        return f"delta={self.delta:g}"


class PiecewiseLinear(Potential):
    r"""A learned expert: the influence :math:`\rho'` is piecewise linear on uniform knots.

    The trainable influence functions of reaction-diffusion denoisers (Chen and Pock's
    TRD): with knots :math:`\mu_j = -S + j h` (``j = 0..J-1``, :math:`h = 2S/(J-1)`) and
    values :math:`v_j`,

    .. math::

        \rho'(u) = v_k + \tfrac{u - \mu_k}{h}\,(v_{k+1} - v_k) \quad (\mu_k \le u \le \mu_{k+1}),

    constant (:math:`v_0`, :math:`v_{J-1}`) outside :math:`[-S, S]`, and
    :math:`\rho(u) = \int_0^u \rho'`, a piecewise quadratic (so :math:`\rho(0) = 0`), in
    closed form from the cumulative trapezoids :math:`C_k = \int_{\mu_0}^{\mu_k} \rho'`.
    Any continuous influence can be approximated; a redescending one (a non-convex
    :math:`\rho`) is what makes an expert keep edges.

    With ``num_experts = M`` every expert has its own values (``values`` is ``[M, J]`` and
    acts on dimension 1 of the responses ``[B, M, H, W]``); with ``None`` one ``[J]``
    is shared. Majoriser weight: the largest knot-to-knot slope of the expert,
    :math:`a = \max(0, \max_j (v_{j+1} - v_j)/h)`, a bound on :math:`\rho''`, so the
    inequality of the base class holds for every :math:`\Delta`; ``min_curvature`` is the
    smallest slope.

    Args:
        num_knots: ``J >= 2``.
        span: ``S > 0``; responses beyond it see the end values.
        num_experts: ``M`` (own values per expert) or ``None`` (shared).
        init: ``"student_t"`` (:math:`v_j = \alpha \mu_j / (1 + \mu_j^2/2)`, the
            :class:`StudentT` influence), ``"linear"`` (:math:`v_j = \alpha \mu_j`, a
            quadratic :math:`\rho`) or a tensor of values.
        alpha: the scale of ``init``.
        learnable: make ``values`` a parameter.
    """

    def __init__(self, num_knots: int = 63, span: float = 4.0, num_experts: int | None = None,
                 init: str | Tensor = "student_t", alpha: float = 1.0, learnable: bool = True):
        super().__init__()
        if isinstance(num_knots, bool) or not isinstance(num_knots, int) or num_knots < 2:
            raise ValueError(f"num_knots: expected an int >= 2, got {num_knots!r}")
        check_positive("span", span, allow_tensor=False)
        if num_experts is not None and (isinstance(num_experts, bool) or not isinstance(num_experts, int)
                                        or num_experts < 1):
            raise ValueError(f"num_experts: expected None or an int >= 1, got {num_experts!r}")
        self.num_knots, self.span, self.num_experts = num_knots, float(span), num_experts
        self.step = 2.0 * self.span / (num_knots - 1)
        shape = (num_knots,) if num_experts is None else (num_experts, num_knots)
        knots = torch.linspace(-self.span, self.span, num_knots)
        if isinstance(init, Tensor):
            if tuple(init.shape) != shape:
                raise ValueError(f"init: expected knot values of shape {shape}, got {tuple(init.shape)}")
            if not init.is_floating_point():
                raise TypeError(f"init: expected a floating-point tensor, got {init.dtype}")
            values = init.detach().clone().float()
        elif init == "student_t":
            values = (alpha * knots / (1 + 0.5 * knots**2)).expand(shape).clone()
        elif init == "linear":
            values = (alpha * knots).expand(shape).clone()
        else:
            raise ValueError(f"init: expected 'student_t', 'linear' or a tensor, got {init!r}")
        if learnable:
            self.values = nn.Parameter(values)
        else:
            self.register_buffer("values", values)

    def _per_expert(self, t: Tensor, u: Tensor) -> Tensor:
        """A per-expert ``[M]`` tensor viewed to broadcast along dimension 1 of ``u``; checks ``u``."""
        if u.dim() < 2 or u.shape[1] != self.num_experts:
            raise ValueError(f"u: expected responses [B, {self.num_experts}, ...] (num_experts={self.num_experts}), "
                             f"got shape {tuple(u.shape)}")
        return t.view(1, -1, *([1] * (u.dim() - 2)))

    def _slopes(self, table: Tensor) -> Tensor:
        """Knot-to-knot slopes :math:`b_j = (v_{j+1} - v_j)/h`, ``[M or 1, J-1]``."""
        table = table.view(-1, self.num_knots)
        return (table[:, 1:] - table[:, :-1]) / self.step

    def _locate(self, u: Tensor):
        """Per element: the flat index ``k`` of the left knot, the offset ``u - mu_k``, the same
        clamped to the segment ``[0, h]`` (both differentiable in ``u``), and the flat table."""
        position = (u + self.span) / self.step  # in knot units
        segment = position.detach().floor().clamp_(0, self.num_knots - 2)
        offset = (position - segment) * self.step
        v = self.values.to(dtype=u.dtype, device=u.device)
        return self._flat_index(segment, self.num_knots), offset, offset.clamp(0.0, self.step), v.reshape(-1)

    def _flat_index(self, segment: Tensor, row_length: int) -> Tensor:
        """The left-knot index ``segment`` (floats, ``[B, M, ...]``) into a flat per-expert
        table whose rows (one per expert) have ``row_length`` entries. The row offsets are added
        as integers: float16 and bfloat16 hold whole numbers exactly only up to 2048 and 256."""
        index = segment.long()
        if self.num_experts is not None:
            rows = torch.arange(self.num_experts, device=segment.device)
            index = index + self._per_expert(row_length * rows, index)
        return index

    def rho_prime(self, u):
        # rho' = a_k + b_k u on segment k (b_k the slope, a_k = v_k - b_k mu_k), and constant
        # beyond the end knots, i.e. rho'(u) = rho'(clamp(u, -S, S)): two table lookups per
        # element (int32 indices), then a fused multiply-add
        table = self.values.to(dtype=u.dtype, device=u.device).view(-1, self.num_knots)
        slope = self._slopes(table)
        left_knots = torch.arange(self.num_knots - 1, dtype=u.dtype, device=u.device) * self.step - self.span
        intercept = table[:, :-1] - slope * left_knots  # [M or 1, J-1], like slope
        if self.num_experts is not None:
            self._per_expert(slope[:, 0], u)  # checks u's experts dimension
        graph = torch.is_grad_enabled() and (u.requires_grad or slope.requires_grad)
        if graph or u.dim() < 3 or math.prod(u.shape[2:]) < _CACHED_PLANE:
            rows = None if self.num_experts is None else self._per_expert(
                torch.arange(self.num_experts, dtype=torch.int32, device=u.device) * (self.num_knots - 1), u)
            return self._affine_lookup(u, intercept.reshape(-1), slope.reshape(-1), rows)
        # no graph, large planes: plane by plane, so that the passes over a plane stay in the
        # cache instead of streaming the whole response tensor through memory each time
        out = torch.empty_like(u)
        for b in range(u.shape[0]):
            for m in range(u.shape[1]):
                row = m if self.num_experts is not None else 0
                self._affine_lookup(u[b, m], intercept[row], slope[row], None, out=out[b, m])
        return out

    def _affine_lookup(self, u: Tensor, intercept: Tensor, slope: Tensor, rows: Tensor | None,
                       out: Tensor | None = None) -> Tensor:
        """``a_k + b_k clamp(u)`` with ``a_k = intercept[k + rows]``, ``b_k = slope[k + rows]``,
        ``k`` the segment of ``u``."""
        inside = u.clamp(-self.span, self.span)
        # inside + S >= 0, so the integer conversion is the floor; int32 rows halve the index traffic
        segment = torch.add(inside.detach(), self.span).div_(self.step).to(torch.int32)
        segment.clamp_(max=self.num_knots - 2)
        if rows is not None:
            segment += rows
        return torch.addcmul(_lookup(intercept, segment), _lookup(slope, segment), inside, out=out)

    def _antiderivative_table(self, v: Tensor) -> Tensor:
        r""":math:`C_k = \int_{\mu_0}^{\mu_k} \rho'` for every knot, flat like ``v``."""
        table = v.view(-1, self.num_knots)
        trapezoids = 0.5 * self.step * (table[:, 1:] + table[:, :-1])
        cumulative = torch.cat([torch.zeros_like(table[:, :1]), trapezoids.cumsum(1)], dim=1)
        return cumulative.reshape(-1)

    def _antiderivative(self, k, offset, inside, v, cumulative):
        v0, v1 = _lookup(v, k), _lookup(v, k + 1)
        slope = (v1 - v0) / self.step
        inner = _lookup(cumulative, k) + v0 * inside + 0.5 * slope * inside**2
        return inner + (v0 + slope * inside) * (offset - inside)  # linear continuation beyond the knots

    def rho(self, u):
        k, offset, inside, v = self._locate(u)
        cumulative = self._antiderivative_table(v)
        value = self._antiderivative(k, offset, inside, v, cumulative)
        # subtract the antiderivative at u = 0 (per expert), so that rho(0) = 0
        zero = u.new_zeros(()) if self.num_experts is None else u.new_zeros(1, self.num_experts)
        at_zero = self._antiderivative(*self._locate(zero)[:3], v, cumulative)
        if self.num_experts is not None:
            at_zero = self._per_expert(at_zero, u)
        return value - at_zero

    def majorizer_weight(self, u):
        bound = self._slopes(self.values.detach()).amax(1).clamp_min(0.0).to(dtype=u.dtype, device=u.device)
        bound = bound.reshape(()) if self.num_experts is None else self._per_expert(bound, u)
        return bound.expand_as(u).clone()

    @property
    def min_curvature(self):  # type: ignore[override]
        return min(float(self._slopes(self.values.detach()).min()), 0.0)

    def extra_repr(self):
        experts = "shared" if self.num_experts is None else self.num_experts
        return f"num_knots={self.num_knots}, span={self.span:g}, experts={experts}"


#: Elements of one response plane from which :meth:`PiecewiseLinear.rho_prime` without a graph
#: goes plane by plane (2.5x on ``[1, 48, 572, 572]`` on one CPU thread; docs/denoising.md).
_CACHED_PLANE = 1 << 16


def _lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table.flatten()[index]`` by ``index_select`` (advanced indexing is slower on the CPU)."""
    return table.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape)
