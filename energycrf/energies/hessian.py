r"""The plain structure of a quadratic term's Hessian: its diagonal and the rest's product.

A quadratic term's Hessian :math:`H` is constant in ``y``. Split as :math:`H = D + R` with
:math:`D` diagonal (a tensor that broadcasts against ``y``: the unary weights :math:`2w`, the
pairwise degree :math:`2d`) and :math:`R` the rest (the pairwise message :math:`-2W^s`), a
sum of terms applies all its diagonals in one pass and only the rests' products cost more.
:class:`HessianStructure` is that split, with what a sum and a scaling need to compose it;
it keeps nothing between products. Applying it (with a scale and a shift folded in, and any
caching) is the solvers' business (:class:`energycrf.solvers.hessian.HessianOperator`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["HessianStructure"]

#: ``rest(v, s)``: ``s`` times the off-diagonal part's product :math:`R v`, a new tensor.
Rest = Callable[[Tensor, float], Tensor]


@dataclass(frozen=True, eq=False)
class HessianStructure:
    r""":math:`H v = \mathrm{diagonal} \odot v + \mathrm{rest}(v, 1)` for a quadratic term on inputs like ``x``.

    Attributes:
        diagonal: :math:`D`, a tensor broadcastable to ``v``, or ``None`` (no diagonal split off).
        rest: ``rest(v, s)`` = :math:`s\,R v` as a new tensor (the scale folded in where it costs
            no pass, e.g. into a convolution window), or ``None`` for a diagonal Hessian.
        parts: for a sum, the structures of its terms, in order (:meth:`sum`); else ``None``.
    """

    diagonal: Tensor | None
    rest: Rest | None
    parts: tuple[HessianStructure, ...] | None = None

    @staticmethod
    def of_product(product: Callable[[Tensor], Tensor]) -> HessianStructure:
        """The structure of a bare product ``v -> H v`` (no diagonal split off; the scale costs a pass)."""
        return HessianStructure(None, lambda v, s: torch.mul(product(v), s))

    def scaled(self, scale: float) -> HessianStructure:
        """The structure of :math:`s H` (the scale goes on the diagonal and into the rest)."""
        diagonal = None if self.diagonal is None else scale * self.diagonal
        rest = None if self.rest is None else (lambda v, s: self.rest(v, scale * s))
        return HessianStructure(diagonal, rest)

    @staticmethod
    def sum(structures: Sequence[HessianStructure]) -> HessianStructure:
        """The structure of a sum: the diagonals added once, the rests' products added into the
        first one's (the summands stay available as :attr:`parts`)."""
        diagonal = None
        for part in structures:
            if part.diagonal is not None:
                diagonal = part.diagonal if diagonal is None else diagonal + part.diagonal
        rests = [part.rest for part in structures if part.rest is not None]
        if len(rests) <= 1:
            return HessianStructure(diagonal, rests[0] if rests else None, tuple(structures))

        def rest(v: Tensor, scale: float) -> Tensor:
            out = rests[0](v, scale)
            for other in rests[1:]:
                out.add_(other(v, scale))
            return out

        return HessianStructure(diagonal, rest, tuple(structures))
