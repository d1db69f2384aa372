import torch

from energycrf.solvers.linalg import block_solve
from energycrf.solvers.linalg import positive_definite_blocks as _positive_definite_blocks


def _general_path(A, g):
    A = _positive_definite_blocks(A)
    rhs = g.permute(0, 2, 3, 1).unsqueeze(-1)
    return torch.cholesky_solve(rhs, torch.linalg.cholesky(A)).squeeze(-1).permute(0, 3, 1, 2)


def test_scalar_sites_divide_with_the_same_floor_as_blocks():
    torch.manual_seed(0)
    A = torch.randn(2, 3, 4, 1, 1, dtype=torch.float64)  # positive, negative ...
    A[0, 0, 0] = 0.0  # ... and singular sites
    g = torch.randn(2, 1, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(block_solve(A, g), _general_path(A, g), rtol=1e-12, atol=1e-12)
    good = A.abs() + 0.1
    torch.testing.assert_close(block_solve(good, g), g / good[..., 0, 0].unsqueeze(1), rtol=1e-14, atol=0)
