"""Pairwise term (paper eq. 3, gradient eq. 8) against a brute-force double sum over site pairs,
and its public operators (message, degree, compatibility_matrix)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.testing.cases import Case
from energycrf.testing.registry import SPECS
from energycrf.testing.strategies import cases

KERNEL_SPECS = [s for s in SPECS.values() if s.family in ("kernels", "compatibility")]


def brute_force(W, M, y):
    """E_p = 1/2 sum_i sum_j W_ij ||P (y_i - y_j)||^2 = 1/2 sum_ij W_ij (y_i - y_j)^T M (y_i - y_j)."""
    B, C, H, Wd = y.shape
    v = y.reshape(B, C, H * Wd).transpose(1, 2)  # [B, n, C]
    diff = v[:, :, None, :] - v[:, None, :, :]  # [B, n, n, C]
    return 0.5 * torch.einsum("ij,bijc,bcd,bijd->b", W, diff, M, diff)


@given(spec=st.sampled_from(KERNEL_SPECS), case=cases(max_size=5), data=st.data())
def test_energy_grad_curvature_from_the_operators(spec, case, data):
    """E_p is the pair sum; grad_i = 2 M (d_i y_i - (W^s y)_i); A_i = 2 d_i M (the public operators)."""
    case = spec.adapt(case)
    E = spec(case).double()
    y, x, c = case.inputs()
    B, C, H, W = case.shape
    M = E.compatibility_matrix(c, B, y.dtype, y.device).detach()
    dense = E.kernel.dense(H, W).detach()
    torch.testing.assert_close(dense, dense.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(E(y, x, c).detach(), brute_force(dense, M, y), rtol=1e-9, atol=1e-9)
    d = E.degree(H, W, y.dtype, y.device).detach()
    torch.testing.assert_close(d, dense.sum(1).reshape(H, W), rtol=1e-10, atol=1e-10)
    expected = 2 * torch.einsum("bcd,bdhw->bchw", M, d * y - E.message(y).detach())
    torch.testing.assert_close(E.grad(y, x, c).detach(), expected, rtol=1e-10, atol=1e-10)
    A = E.curvature(y, x, c).detach()
    torch.testing.assert_close(A, 2 * d[None, :, :, None, None] * M[:, None, None], rtol=1e-10, atol=1e-10)


def test_default_pairwise_is_usable_as_documented():
    E = ec.energies.Pairwise(channels=4)
    y = torch.randn(2, 4, 8, 8)
    assert E(y, y).shape == (2,)
    assert E.interaction_radius == 2 and not E.periodic and E.is_quadratic
    for value in (1.0, 0.7, 3.1):  # constants cost nothing, up to rounding (relative to sum_i d_i |y_i|^2)
        for dtype, rel in ((torch.float32, 1e-6), (torch.float64, 1e-14)):
            y = torch.full((1, 4, 8, 8), value, dtype=dtype)
            scale = float((E.degree(8, 8, dtype, y.device) * y**2).sum())
            assert float(E(y, torch.zeros_like(y)).abs().max()) <= rel * scale


def test_message_is_linear_and_self_adjoint():
    """<W^s a, b> = <a, W^s b> for every kernel (W^s symmetric), on a non-square image."""
    g = torch.Generator().manual_seed(3)
    for spec in KERNEL_SPECS:
        case = spec.adapt(Case(height=5, width=6, channels=2, condition="pooled"))
        E = spec(case).double()
        a = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64)
        b = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64)
        with torch.no_grad():
            lhs = (E.message(a) * b).sum()
            rhs = (a * E.message(b)).sum()
        assert abs(float(lhs - rhs)) < 1e-10 * (1 + abs(float(lhs))), spec.name
