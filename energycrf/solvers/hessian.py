r"""The solvers' applier of a quadratic part's Hessian, :math:`(sH + tI)\,v`, prepared once.

An energy gives its constant Hessian's plain structure (:class:`~energycrf.energies.hessian.HessianStructure`:
a diagonal :math:`D` and the rest's product :math:`R`). A polynomial preconditioner applies
:math:`sH + tI` many times with a few number pairs ``(s, t)``: :class:`HessianOperator` folds
the scale and the shift into the diagonal, :math:`(sD + t) \odot v + s R v`, and keeps each
shifted diagonal for the next application with the same pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..energies.hessian import HessianStructure

__all__ = ["HessianOperator"]


def _inside_functorch_transform() -> bool:
    """Whether a ``torch.func`` transform is running (its tensors belong to it: nothing made
    inside may be kept). Torch has no public query for it."""
    return torch._C._functorch.maybe_current_level() is not None


class HessianOperator:
    """``(s H + t I) v = (s diagonal + t) * v + rest(v, s)`` for the :class:`HessianStructure` of a
    quadratic part, with the scale ``s`` and the shift ``t`` (numbers) folded in where they cost no
    pass. The result is always a new tensor.

    Attributes:
        structure: the energy's :class:`HessianStructure` it applies.
        diagonal, rest, parts: the structure's.
    """

    def __init__(self, structure: HessianStructure):
        self.structure = structure
        self.diagonal, self.rest = structure.diagonal, structure.rest
        self._shifted: dict[tuple[float, float], Tensor] = {}  # s diagonal + t by (s, t)

    @property
    def parts(self) -> tuple[HessianStructure, ...] | None:
        """A sum's structures, one per term, else ``None``."""
        return self.structure.parts

    @staticmethod
    def of_energy(E: Any, x: Tensor, c: Tensor | None, y: Tensor | None = None) -> HessianOperator:
        """The operator of ``E``'s Hessian on inputs like ``x``: its ``_hessian_structure`` (an
        energycrf term), or the bare product ``E._hessian_vector_product`` at ``y`` (default ``x``)
        for a duck-typed energy without one."""
        if hasattr(E, "_hessian_structure"):
            return HessianOperator(E._hessian_structure(x, c))
        at = x if y is None else y
        return HessianOperator.of_product(lambda v: E._hessian_vector_product(at, x, c, v))

    @staticmethod
    def of_product(product: Callable[[Tensor], Tensor]) -> HessianOperator:
        """The operator of a bare product ``v -> H v`` (no diagonal split off; the scale costs a pass)."""
        return HessianOperator(HessianStructure.of_product(product))

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
        if torch.is_grad_enabled() or _inside_functorch_transform():
            return scale * self.diagonal + shift
        key = (float(scale), float(shift))
        kept = self._shifted.get(key)
        if kept is None:
            kept = self._shifted[key] = scale * self.diagonal + shift
        return kept
