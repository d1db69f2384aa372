"""The block preconditioner: the inverse curvature blocks, the mean-field step."""

from __future__ import annotations

import torch
from torch import Tensor

from ..linalg import positive_definite_blocks
from ..problem import Problem

__all__ = ["BlockPreconditioner"]


class BlockPreconditioner:
    """Applies the inverse curvature blocks, ``(P v)_i = A_i^{-1} v_i`` (the mean-field step)."""

    def __init__(self, problem: Problem, y: Tensor):
        self.L = torch.linalg.cholesky(positive_definite_blocks(problem.curvature(y)))

    def __call__(self, v: Tensor) -> Tensor:
        rhs = v.permute(0, 2, 3, 1).unsqueeze(-1)
        return torch.cholesky_solve(rhs, self.L).squeeze(-1).permute(0, 3, 1, 2)
