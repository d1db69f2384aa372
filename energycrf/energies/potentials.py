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

__all__ = ["Potential", "ReLUExpert", "StudentT", "Charbonnier", "Huber"]


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
    """

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        check_positive("alpha", alpha, allow_tensor=False)
        self.alpha = float(alpha)

    @property
    def min_curvature(self):  # type: ignore[override]
        return -self.alpha / 8

    def rho(self, u):
        return self.alpha * torch.log1p(0.5 * u**2)

    def rho_prime(self, u):
        return self.alpha * u / (1 + 0.5 * u**2)

    def majorizer_weight(self, u):
        return self.alpha / (1 + 0.5 * u**2)

    def extra_repr(self):
        return f"alpha={self.alpha:g}"


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
