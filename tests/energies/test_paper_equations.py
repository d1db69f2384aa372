"""Solving eq. 8 = 0 for y_i reproduces eq. 9, with the paper's energy
(Unary w = 1 + Pairwise + FieldOfExperts with the ReLU expert and zero centre taps).

The shared site update y_i <- y_i - A_i^{-1} g_i (A_i = 2 I + 2 d_i M + 0: the FoE term is
concave, its block is the tangent bound) must equal

    K^{-1} (x_i + M (W^s y)_i + xi_HO(y)_i),   K = I + d_i M,

computed from the public operators Pairwise.message, .degree, .compatibility_matrix and
FieldOfExperts.score, with xi_HO = -1/2 grad E_f (eq. 11).
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from energycrf.testing.registry import SPECS, paper_energy
from energycrf.testing.strategies import cases

# the pairwise configurations the paper's energy is tried with (kernels and compatibilities)
PAIRWISE = [s for s in SPECS.values() if s.family in ("kernels", "compatibility")]


def _paper(spec, case):
    pairwise = spec(case)
    E = paper_energy(case, kernel=pairwise.kernel, compatibility=pairwise.compatibility).double()
    return E


@given(spec=st.sampled_from(PAIRWISE), case=cases(max_size=7, max_channels=4))
def test_site_update_is_eq_9(spec, case):
    case = spec.adapt(case)
    E = _paper(spec, case)
    unary, pairwise, foe = E["unary"], E["pairwise"], E["field_of_experts"]
    assert foe.zero_center and type(foe.potential).__name__ == "ReLUExpert"
    y, x, c = case.inputs()
    B, C, H, W = case.shape

    # the shared update rule, from grad and curvature
    g = E.grad(y, x, c).detach()
    A = E.curvature(y, x, c).detach()  # [B, H, W, C, C]
    step = torch.linalg.solve(A, g.permute(0, 2, 3, 1).unsqueeze(-1)).squeeze(-1)
    updated = y - step.permute(0, 3, 1, 2)

    # eq. 9 from the public operators
    M = pairwise.compatibility_matrix(c, B, y.dtype, y.device).detach()
    d = pairwise.degree(H, W, y.dtype, y.device).detach()
    xi = foe.score(y).detach()
    torch.testing.assert_close(xi, -0.5 * foe.grad(y, x, c).detach(), rtol=1e-12, atol=1e-12)
    eye = torch.eye(C, dtype=y.dtype)
    Kmat = eye + d[None, :, :, None, None] * M[:, None, None]  # [B, H, W, C, C]
    rhs = x + torch.einsum("bcd,bdhw->bchw", M, pairwise.message(y).detach()) + xi
    eq9 = torch.linalg.solve(Kmat, rhs.permute(0, 2, 3, 1).unsqueeze(-1)).squeeze(-1).permute(0, 3, 1, 2)
    torch.testing.assert_close(updated, eq9, rtol=1e-9, atol=1e-9)

    # eq. 8: the gradient is 2 (y - x) + 2 M (d y - W^s y) - sum_m J^- relu(J y), the last sum = 2 xi
    eq8 = 2 * (y - x) + 2 * torch.einsum("bcd,bdhw->bchw", M, d * y - pairwise.message(y).detach()) - 2 * xi
    torch.testing.assert_close(g, eq8, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A, 2 * Kmat, rtol=1e-10, atol=1e-10)
    assert float(unary.weight()) == 1.0


def test_eq_9_fixed_point_zeroes_eq_8_for_the_quadratic_part():
    """Without the FoE term the energy is quadratic: iterating eq. 9 site-parallel (Jacobi) from x
    converges to the point where eq. 8 vanishes, the exact minimiser (a sanity check of the
    operators' conventions, d_i and M entering K consistently)."""
    import energycrf as ec

    torch.manual_seed(0)
    pw = ec.energies.Pairwise(channels=2, kernel=ec.energies.LocalKernel(radius=1, strength=0.5)).double()
    E = ec.energies.Unary() + pw
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    y = x.clone()
    d = pw.degree(6, 5, x.dtype, x.device)
    M = pw.compatibility_matrix(None, 1, x.dtype, x.device)
    Kinv = torch.linalg.inv(torch.eye(2, dtype=x.dtype) + d[None, :, :, None, None] * M[:, None, None])
    for _ in range(200):
        rhs = x + torch.einsum("bcd,bdhw->bchw", M, pw.message(y))
        y = torch.einsum("bhwcd,bdhw->bchw", Kinv, rhs)
    assert float(E.grad(y, x).abs().max()) < 1e-10
