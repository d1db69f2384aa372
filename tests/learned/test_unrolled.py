"""Unrolled energies: backprop through solver steps and implicit differentiation at the fixed point."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import energycrf as ec
from energycrf.energies import FieldOfExperts, Pairwise, Unary
from energycrf.energies.potentials import Charbonnier
from energycrf.learned.unrolled import ImplicitDifferentiationWarning, Unrolled, conjugate_gradient


def _convex_energy(seed, channels=2, filters=3):
    """Strongly convex: unary (margin 2 min w) + PSD pairwise + convex Charbonnier FoE, all learnable."""
    g = torch.Generator().manual_seed(seed)
    P = 0.7 * torch.eye(channels) + 0.2 * torch.randn(channels, channels, generator=g)
    pair = Pairwise(channels, compatibility="learnable")
    foe = FieldOfExperts(channels, num_filters=filters, kernel_size=3, potential=Charbonnier())
    with torch.no_grad():
        pair.compatibility.weight.copy_(P)
        foe.weight.copy_(0.15 * torch.randn(foe.weight.shape, generator=g))
    unary = Unary(weight=1.0 + torch.rand(channels, generator=g), learnable=True)
    return (unary + pair + foe).double()


def _grads(E, layer, x, target, c=None):
    E.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_()
    loss = ((layer(xx, c) - target) ** 2 * torch.linspace(0.5, 1.5, x.shape[-1], dtype=x.dtype)).sum()
    loss.backward()
    out = {n: p.grad.clone() for n, p in E.named_parameters()}
    out["x"] = xx.grad.clone()
    return loss.detach(), out


@settings(max_examples=6)  # each example solves twice to 1e-13: a small override
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 2), size=st.integers(4, 6))
def test_implicit_matches_backprop_at_convergence(seed, batch, size):
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 2, size, size, generator=g, dtype=torch.float64)
    target = torch.randn(batch, 2, size, size, generator=g, dtype=torch.float64)
    E1, E2 = _convex_energy(seed), _convex_energy(seed)
    # damped mean-field: a contraction on these energies (undamped Jacobi may cycle)
    back = Unrolled(E1, "mean_field", 150, differentiation="backprop", damping=0.5)
    impl = Unrolled(E2, "mean_field", 500, differentiation="implicit", gtol=1e-13, cg_tol=1e-13, damping=0.5)
    l1, g1 = _grads(E1, back, x, target)
    l2, g2 = _grads(E2, impl, x, target)
    assert impl.last_result["converged"].all()
    torch.testing.assert_close(l1, l2, rtol=1e-10, atol=1e-10)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-7, atol=1e-8, msg=k)


def test_implicit_matches_finite_differences():
    """Directional derivatives of L(theta) = loss(y*(theta)) by central differences, float64."""
    E = _convex_energy(3)
    layer = Unrolled(E, "mean_field", 1000, differentiation="implicit", gtol=1e-14, cg_tol=1e-14, damping=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64)
    target = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64)
    _, grads = _grads(E, layer, x, target)
    params = dict(E.named_parameters())

    def loss_at(shift):
        with torch.no_grad():
            for n, p in params.items():
                p.add_(shift[n])
            value = ((layer(x) - target) ** 2 * torch.linspace(0.5, 1.5, 5, dtype=x.dtype)).sum()
            for n, p in params.items():
                p.sub_(shift[n])
        return value

    h = 1e-5
    for k in range(3):
        d = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
        fd = (loss_at({n: h * v for n, v in d.items()}) - loss_at({n: -h * v for n, v in d.items()})) / (2 * h)
        analytic = sum((grads[n] * d[n]).sum() for n in params)
        assert float(fd) == pytest.approx(float(analytic), rel=1e-6, abs=1e-8)
    # and in x, one coordinate at a time
    for idx in [(0, 0, 0, 0), (1, 1, 2, 3)]:
        e = torch.zeros_like(x)
        e[idx] = h

        def lx(xv):
            with torch.no_grad():
                return ((layer(xv) - target) ** 2 * torch.linspace(0.5, 1.5, 5, dtype=x.dtype)).sum()

        fd = (lx(x + e) - lx(x - e)) / (2 * h)
        assert float(fd) == pytest.approx(float(grads["x"][idx]), rel=1e-6, abs=1e-8)


def test_implicit_through_text_condition_and_coordinate_descent():
    torch.manual_seed(0)
    E = (Unary(weight=1.5) + Pairwise(2, compatibility="text", cond_dim=5)).double()
    with torch.no_grad():
        E[1].compatibility.to_projection.weight.normal_(0, 0.2)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    target = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    out = {}
    for mode, method, k in [("backprop", "mean_field", 200), ("implicit", "coordinate_descent", 300)]:
        c = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        layer = Unrolled(E, method, k, differentiation=mode, gtol=1e-13)
        E.zero_grad(set_to_none=True)
        ((layer(x, c) - target) ** 2).sum().backward()
        out[mode] = [c.grad.clone()] + [p.grad.clone() for p in E.parameters()]
    for a, b in zip(out["backprop"], out["implicit"]):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)


def test_backprop_through_gradient_descent_and_a_step_callable():
    E = _convex_energy(5)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)

    def step(energy, y, x, c):
        return y - 0.05 * energy.grad(y, x, c)

    by_callable = Unrolled(E, step, 400)
    by_gd = Unrolled(E, "gradient_descent", 200)
    with torch.no_grad():
        g0 = E.grad(x, x).norm()
        assert E.grad(by_callable(x), x).norm() < 1e-10 * g0  # both reach the minimiser
        assert E.grad(by_gd(x), x).norm() < 1e-8 * g0
    y = by_callable(x)
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in E.parameters())
    # the implicit mode with a step callable
    E2 = _convex_energy(5)
    impl = Unrolled(E2, lambda e, y, x, c: y - 0.05 * e.grad(y, x, c), 2000, differentiation="implicit", gtol=1e-12)
    _, g_impl = _grads(E2, impl, x, torch.zeros_like(x))
    _, g_back = _grads(E, Unrolled(E, step, 800), x, torch.zeros_like(x))
    for k in g_back:
        torch.testing.assert_close(g_impl[k], g_back[k], rtol=1e-6, atol=1e-8)


def _saved_bytes(layer, x):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    y.sum().backward()
    return total


def test_implicit_memory_does_not_grow_with_iterations():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    E = _convex_energy(1)
    # gtol=0: run every iteration (and warn that no fixed point was certified)
    with pytest.warns(ImplicitDifferentiationWarning):
        few = _saved_bytes(Unrolled(E, "mean_field", 20, differentiation="implicit", gtol=0.0), x)
    with pytest.warns(ImplicitDifferentiationWarning):
        many = _saved_bytes(Unrolled(E, "mean_field", 200, differentiation="implicit", gtol=0.0), x)
    assert few == many > 0
    b_few = _saved_bytes(Unrolled(E, "mean_field", 5), x)
    b_many = _saved_bytes(Unrolled(E, "mean_field", 50), x)
    assert b_many > 5 * b_few
    assert b_few > few  # even 5 unrolled steps keep more than the implicit graph


def test_implicit_warns_when_not_converged():
    E = _convex_energy(2)
    layer = Unrolled(E, "mean_field", 2, differentiation="implicit")
    with pytest.warns(ImplicitDifferentiationWarning, match="did not fall below"):
        layer(torch.randn(1, 2, 6, 6, dtype=torch.float64)).sum().backward()


def test_conjugate_gradient_solves_and_detects_indefinite_hessians():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 6, 6, generator=g, dtype=torch.float64)
    H = A @ A.transpose(1, 2) + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(2, 6, generator=g, dtype=torch.float64)
    v, ok, its = conjugate_gradient(lambda p: torch.einsum("bij,bj->bi", H, p), b, tol=1e-14)
    assert ok.all() and its <= 12
    torch.testing.assert_close(v, torch.linalg.solve(H, b), rtol=1e-10, atol=1e-10)
    # preconditioned by the diagonal of H (Jacobi)
    d = H.diagonal(dim1=1, dim2=2)
    v, ok, _ = conjugate_gradient(lambda p: torch.einsum("bij,bj->bi", H, p), b, tol=1e-14, precondition=lambda r: r / d)
    assert ok.all()
    torch.testing.assert_close(v, torch.linalg.solve(H, b), rtol=1e-10, atol=1e-10)
    v0, ok0, its0 = conjugate_gradient(lambda p: p, torch.zeros(2, 3, dtype=torch.float64))
    assert ok0.all() and (v0 == 0).all() and its0 == 0
    with pytest.raises(RuntimeError, match="not positive definite"):
        conjugate_gradient(lambda p: -p, b)


def test_block_preconditioning_gives_the_same_gradients_in_fewer_cg_iterations():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)
    out, its = {}, {}
    for pre in (False, True):
        E = _convex_energy(4)
        with torch.no_grad():  # a stiffer pairwise term: the blocks carry much of the curvature
            E[1].compatibility.weight.mul_(3.0)
        layer = Unrolled(E, "mean_field", 2000, differentiation="implicit", gtol=1e-13, cg_tol=1e-13,
                         damping=0.3, precondition=pre)
        _, out[pre] = _grads(E, layer, x, target)
        its[pre] = layer.backward_stats["cg_iterations"]
    for k in out[False]:
        torch.testing.assert_close(out[True][k], out[False][k], rtol=1e-9, atol=1e-10)
    assert its[True] < its[False], its


def test_no_graph_when_nothing_needs_gradients():
    E = (Unary() + Pairwise(2)).double()
    layer = Unrolled(E, "mean_field", 100, differentiation="implicit")
    y = layer(torch.randn(1, 2, 5, 5, dtype=torch.float64))
    assert not y.requires_grad


def test_validation():
    E = Unary() + Pairwise(2)
    with pytest.raises(TypeError, match="energy"):
        Unrolled("E")
    with pytest.raises(ValueError, match="differentiation"):
        Unrolled(E, differentiation="adjoint")
    with pytest.raises(ValueError, match="num_iterations"):
        Unrolled(E, num_iterations=0)
    with pytest.raises(ValueError):
        Unrolled(E, "no_such_method")
    with pytest.raises(TypeError, match="method"):
        Unrolled(E, 3)
    with pytest.raises(TypeError, match="solver options"):
        Unrolled(E, lambda e, y, x, c: y, damping=0.5)
    layer = Unrolled(E, "mean_field", 3, damping=0.5)
    assert layer.solver.damping == 0.5
    with pytest.raises(ValueError, match="rank 4"):
        layer(torch.randn(2, 5, 5))
    with pytest.raises(ValueError, match="y0"):
        layer(torch.randn(1, 2, 5, 5), y0=torch.randn(1, 2, 4, 4))


@pytest.mark.parametrize("differentiation", ["backprop", "implicit"])
def test_training_through_the_solver_learns_the_smoothing_strength(differentiation):
    """Denoising piecewise-smooth signals: learning w and P through the minimiser lowers the loss."""
    torch.manual_seed(0)
    E = (Unary(weight=5.0, learnable=True) + Pairwise(1, compatibility="learnable")).double()
    with torch.no_grad():
        E[1].compatibility.weight.fill_(0.3)
    layer = Unrolled(E, "mean_field", 20 if differentiation == "backprop" else 300,
                     differentiation=differentiation, damping=0.8)
    h = torch.linspace(0, 3.0, 8, dtype=torch.float64)
    clean = (torch.sin(h)[:, None] * torch.cos(h)[None, :]).expand(4, 1, 8, 8)
    opt = torch.optim.Adam(E.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    first = None
    for _ in range(15):
        loss = (layer(noisy) - clean).square().mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first
    assert E[0].weight().item() < 5.0  # it learned to trust the noisy data less
