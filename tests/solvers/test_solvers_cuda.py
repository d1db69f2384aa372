"""The solvers on a CUDA device agree with the CPU (skipped without one)."""

from __future__ import annotations

import pytest
import torch
from solver_problems import F64, convex_energy, quadratic_energy

import energycrf as ec

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("method", ["coordinate_descent", "mean_field", "gradient_descent", "lbfgs",
                                    "torch_lbfgs", "scipy_lbfgs"])
def test_cuda_matches_cpu_on_a_convex_energy(method):
    E = convex_energy(2)
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    cpu = ec.solve(E, x, method=method, max_iters=300, tol=1e-14, gtol=1e-10)
    gpu = ec.solve(E.cuda(), x.cuda(), method=method, max_iters=300, tol=1e-14, gtol=1e-10)
    assert gpu.y.device.type == "cuda" and gpu.status == cpu.status == ["converged", "converged"]
    torch.testing.assert_close(gpu.y.cpu(), cpu.y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["conjugate_gradient", "fft"])
def test_cuda_exact_quadratic_solvers(method):
    E = quadratic_energy(2, boundary="circular")
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    cpu = ec.solve(E, x, method=method, tol=1e-15, gtol=1e-11)
    gpu = ec.solve(E.cuda(), x.cuda(), method=method, tol=1e-15, gtol=1e-11)
    torch.testing.assert_close(gpu.y.cpu(), cpu.y, rtol=1e-8, atol=1e-8)


def test_cuda_compare_solvers_draws_its_figure(tmp_path):
    E = convex_energy(1).cuda()
    x = torch.randn(1, 1, 8, 8, dtype=F64, device="cuda")
    comp = ec.compare_solvers(E, x, methods=["mean_field", "lbfgs"], figure=tmp_path / "gap.png")
    assert (tmp_path / "gap.png").is_file() and min(r.gap for r in comp.rows) == 0.0


def test_cuda_quadratic_start_matches_cpu():
    from energycrf.solvers.base import Problem
    from energycrf.solvers.start import quadratic_start

    E = convex_energy(2)
    x = torch.randn(2, 2, 12, 10, generator=torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(quadratic_start(Problem(E.cuda(), x.cuda())).cpu(), quadratic_start(Problem(E, x)),
                               rtol=1e-10, atol=1e-12)
    cpu = ec.solve(E, x, method="lbfgs", precondition="fft", y0="quadratic", max_iters=200, tol=1e-14, gtol=1e-10)
    gpu = ec.solve(E.cuda(), x.cuda(), method="lbfgs", precondition="fft", y0="quadratic", max_iters=200,
                   tol=1e-14, gtol=1e-10)
    torch.testing.assert_close(gpu.y.cpu(), cpu.y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("compatibility", [None, "matrix"])
def test_cuda_chebyshev_matches_cpu(compatibility):
    """The Chebyshev preconditioner's bounds (the kernel's spectrum, the compatibility's top
    eigenvalue) and polynomial on the device, and a window too large for the image (Gershgorin)."""
    E = convex_energy(2) if compatibility else (ec.energies.Unary() + ec.energies.Pairwise(channels=2)).double()
    x = torch.randn(2, 2, 12, 10, generator=torch.Generator().manual_seed(3), dtype=F64)
    for y0 in (None, "quadratic"):
        cpu = ec.solve(E, x, method="lbfgs", precondition="chebyshev", y0=y0, max_iters=200, tol=1e-14, gtol=1e-10)
        gpu = ec.solve(E.cuda(), x.cuda(), method="lbfgs", precondition="chebyshev", y0=y0, max_iters=200,
                       tol=1e-14, gtol=1e-10)
        torch.testing.assert_close(gpu.y.cpu(), cpu.y, rtol=1e-6, atol=1e-6)
    pairwise = ec.energies.Pairwise(channels=2).double()
    assert pairwise.cuda().curvature_bound(3, 3) == pytest.approx(pairwise.cpu().curvature_bound(3, 3))
