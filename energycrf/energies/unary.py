r"""The unary term (paper 3.2.1): :math:`E_u = \sum_i \sum_c w_c (y_{i,c} - x_{i,c})^2`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._validation import check_positive
from .energy import Energy, _sample_dot
from .hessian import HessianStructure

__all__ = ["Unary"]


class Unary(Energy):
    r"""Data fidelity :math:`E_u = \sum_i w \|y_i - x_i\|^2` (paper 3.2.1, first term of eq. 7).

    Gradient :math:`2 w (y - x)`; curvature blocks :math:`A_i = 2\,\mathrm{diag}(w)` (exact).

    Args:
        weight: a positive scalar, or one positive weight per channel (a ``[C]`` tensor or sequence).
        learnable: learn the weight (kept positive through its logarithm).

    Example:
        >>> import torch, energycrf as ec
        >>> x = torch.randn(1, 4, 8, 8)
        >>> ec.energies.Unary(weight=2.0)(x + 1, x)
        tensor([512.])
    """

    is_quadratic = True
    quadratic_anchor = "data"  # 2 w (y - x)
    interaction_radius = 0
    translation_invariant = True  # one weight per channel, the same at every site

    def __init__(self, weight: float | Tensor = 1.0, learnable: bool = False):
        super().__init__()
        if isinstance(weight, (list, tuple)):
            if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weight):
                raise TypeError(f"weight must be a number or a sequence of numbers, got {weight!r}")
            weight = torch.tensor(weight, dtype=torch.get_default_dtype())
        check_positive("weight", weight)
        weight = torch.as_tensor(weight, dtype=torch.get_default_dtype()).clone()
        if weight.dim() > 1:
            raise ValueError(f"weight must be a scalar or a [C] vector, got shape {tuple(weight.shape)}")
        self.channels = int(weight.shape[0]) if weight.dim() == 1 else None
        self.learnable = bool(learnable)
        if learnable:
            self.log_weight = nn.Parameter(weight.log())
        else:
            self.register_buffer("fixed_weight", weight)

    def weight(self) -> Tensor:
        """The weight ``w`` (scalar or ``[C]``)."""
        return self.log_weight.exp() if self.learnable else self.fixed_weight

    def _broadcast(self, y: Tensor) -> Tensor:
        w = self.weight().to(dtype=y.dtype, device=y.device)
        return w.reshape(1, -1, 1, 1) if w.dim() == 1 else w

    def energy(self, y, x, c=None):
        return (self._broadcast(y) * (y - x) ** 2).sum((1, 2, 3))

    _owns_grad = True

    def _grad(self, y, x, c):
        return torch.sub(y, x).mul_(2 * self._broadcast(y))

    def _energy_and_grad(self, y, x, c):
        diff = torch.sub(y, x)
        g = diff * (2 * self._broadcast(y))
        return 0.5 * _sample_dot(diff, g), g

    def _hessian_vector_product(self, y, x, c, v):
        return v * (2 * self._broadcast(v))

    def _hessian_structure(self, x, c):
        return HessianStructure(2 * self._broadcast(x), None)

    def _curvature(self, y, x, c):
        b, channels, h, w = y.shape
        weight = self.weight().to(dtype=y.dtype, device=y.device).expand(channels)
        return torch.diag_embed(2 * weight).expand(b, h, w, channels, channels)

    def convexity_margin(self, c=None):
        return 2 * float(self.weight().detach().min())

    def curvature_bound(self, height, width, c=None):
        return 2 * float(self.weight().detach().max())

    def extra_repr(self):
        w = self.weight().detach()
        value = f"{float(w):g}" if w.dim() == 0 else str([round(float(v), 4) for v in w])
        return f"weight={value}" + (", learnable" if self.learnable else "")

