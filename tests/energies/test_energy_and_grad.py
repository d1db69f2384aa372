"""``E.energy_and_grad``: one evaluation equal to ``(E(y, x, c), E.grad(y, x, c))`` and to
autograd, for every kind of term; sums that share one convolution between the Field of
Experts and a local pairwise kernel; the closed-form degree map; torch.func transforms."""

from __future__ import annotations

import pytest
import torch

import energycrf as ec
from energycrf.energies.fused import shared_convolutions

K = ec.energies
F64 = torch.float64


class Quartic(ec.Energy):
    """A user's term with only ``energy`` (the one-pass autograd fallback)."""

    def energy(self, y, x, c=None):
        return ((y - x) ** 4).sum((1, 2, 3))


class GivenGrad(ec.Energy):
    """A user's term with its own ``_grad`` that returns the input ``x`` itself (not owned)."""

    def energy(self, y, x, c=None):
        return (x * y).sum((1, 2, 3))

    def _grad(self, y, x, c):
        return x


def _energies(channels: int):
    torch.manual_seed(0)
    cond = torch.randn(3, channels)
    proj = torch.randn(channels + 1, channels)
    out = {
        "unary": K.Unary(weight=[0.5 + 0.1 * k for k in range(channels)]),
        "pairwise": K.Pairwise(channels=channels),
        "pairwise_matrix": K.Pairwise(channels=channels, compatibility=proj),
        "foe": K.FieldOfExperts(channels=channels, num_filters=3, kernel_size=5),
        "foe_student": K.FieldOfExperts(channels=channels, num_filters=2, kernel_size=3, potential=K.StudentT()),
        "foe_eps": K.FieldOfExperts(channels=channels, num_filters=2, kernel_size=3, potential=K.ReLUExpert(eps=0.5)),
        "user": Quartic(),
        "sum_shared": K.Unary() + K.Pairwise(channels=channels) + K.FieldOfExperts(channels=channels, kernel_size=5),
        "sum_shared_circular": (
            K.Unary()
            + K.Pairwise(channels=channels, kernel=K.LocalKernel(radius=1, boundary="circular"))
            + K.FieldOfExperts(channels=channels, num_filters=4, kernel_size=3, boundary="circular")
        ),
        "sum_shared_learnable_matrix": (
            K.FieldOfExperts(channels=channels, num_filters=2, kernel_size=5, potential=K.Charbonnier())
            + K.Pairwise(channels=channels, kernel=K.LocalKernel(radius=2, learnable=True), compatibility=proj)
            + 2.0 * K.Unary()
        ),
        "sum_shared_relu_first": (  # the ReLU expert's in-place relu runs before the message is read
            K.FieldOfExperts(channels=channels, num_filters=3, kernel_size=3)
            + K.Pairwise(channels=channels, kernel=K.LocalKernel(radius=1, learnable=True)) + K.Unary()
        ),
        "sum_unshared": (  # window sizes differ: no shared convolution
            K.Unary() + K.Pairwise(channels=channels, kernel=K.LocalKernel(radius=1))
            + K.FieldOfExperts(channels=channels, kernel_size=5)
        ),
        "sum_user_first": GivenGrad() + Quartic() + K.Unary() + K.FieldOfExperts(channels=channels, kernel_size=3),
        "sum_long_range": K.Unary() + K.Pairwise(channels=channels, kernel=K.LongRangeKernel(sigma=2.0))
        + K.FieldOfExperts(channels=channels, kernel_size=3),
    }
    return out, cond


@pytest.mark.parametrize("name", [
    "unary", "pairwise", "pairwise_matrix", "foe", "foe_student", "foe_eps", "user", "sum_shared",
    "sum_shared_circular", "sum_shared_learnable_matrix", "sum_shared_relu_first", "sum_unshared", "sum_user_first",
    "sum_long_range",
])
def test_energy_and_grad_equals_energy_grad_and_autograd(name):
    channels = 3
    energies, _ = _energies(channels)
    E = energies[name].double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, channels, 9, 7, generator=g, dtype=F64)
    y = x + 0.3 * torch.randn(x.shape, generator=g, dtype=F64)
    x_before, y_before = x.clone(), y.clone()
    value, grad = E.energy_and_grad(y, x)
    torch.testing.assert_close(value, E(y, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, E.grad(y, x), rtol=1e-12, atol=1e-12)
    g_ad = torch.func.grad(lambda v: E(v, x).sum())(y)
    torch.testing.assert_close(grad, g_ad, rtol=1e-10, atol=1e-10)
    # inputs untouched (sums add in place only into tensors the terms own)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert value.shape == (3,) and grad.shape == y.shape and grad.dtype == F64


def test_energy_and_grad_validates_its_inputs():
    E = K.Unary() + K.FieldOfExperts(channels=4)
    with pytest.raises(ValueError, match="channels"):
        E.energy_and_grad(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_shared_convolution_is_used_only_where_it_applies():
    energies, _ = _energies(2)
    y = torch.randn(1, 2, 8, 8)
    for name, expected in [("sum_shared", {1, 2}), ("sum_shared_circular", {1, 2}),
                           ("sum_shared_learnable_matrix", {0, 1}), ("sum_unshared", set()),
                           ("sum_long_range", set())]:
        assert set(shared_convolutions(list(energies[name].terms), y)) == expected, name


@pytest.mark.parametrize("name", ["sum_shared", "sum_shared_circular", "sum_shared_learnable_matrix",
                                  "sum_shared_relu_first"])
def test_energy_alone_of_a_sum_shares_the_convolution(name):
    """``E(y, x)`` of a sum takes the FoE responses and the pairwise message from one
    convolution, and equals the terms' own energies, in value and in autograd gradients
    (in ``y`` and in the parameters)."""
    from unittest import mock

    from energycrf.energies import field_of_experts, fused, kernels

    energies, _ = _energies(3)
    E = energies[name].double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 9, 7, generator=g, dtype=F64)
    y = (x + 0.3 * torch.randn(x.shape, generator=g, dtype=F64)).requires_grad_(True)
    with mock.patch.object(fused, "correlate", wraps=fused.correlate) as shared, \
            mock.patch.object(field_of_experts, "correlate", wraps=field_of_experts.correlate) as own_foe, \
            mock.patch.object(kernels, "correlate_shared", wraps=kernels.correlate_shared) as own_pairwise:
        value = E(y, x)
    assert (shared.call_count, own_foe.call_count, own_pairwise.call_count) == (1, 0, 0)
    reference = sum(t(y, x) for t in E.terms)
    torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)
    inputs = [y, *E.parameters()]
    got = torch.autograd.grad(value.sum(), inputs)
    want = torch.autograd.grad(reference.sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_gradient_of_a_sum_is_differentiable_in_the_parameters():
    """Backprop through E.grad (unrolled solvers) and E.energy_and_grad matches central
    differences in the parameters, through the shared convolution and the in-place sums."""
    torch.manual_seed(0)
    E = (K.Unary(learnable=True)
         + K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1, learnable=True))
         + K.FieldOfExperts(channels=2, num_filters=2, kernel_size=3)).double()
    x = torch.randn(2, 2, 6, 5, dtype=F64)
    y = x + 0.2 * torch.randn_like(x)
    v = torch.randn_like(y)

    def objective():
        value, g = E.energy_and_grad(y, x)
        return (g * v).sum() + 0.3 * value.sum() + (E.grad(y, x) * v.flip(-1)).sum()

    params = list(E.parameters())
    analytic = torch.autograd.grad(objective(), params)
    h = 1e-6
    with torch.no_grad():
        for p, a in zip(params, analytic):
            flat, a = p.view(-1), a.reshape(-1)
            for i in range(flat.numel()):
                old = float(flat[i])
                flat[i] = old + h
                up = float(objective())
                flat[i] = old - h
                down = float(objective())
                flat[i] = old
                assert abs((up - down) / (2 * h) - float(a[i])) <= 1e-6 * (1 + abs(float(a[i])))


@pytest.mark.parametrize("name", ["sum_shared", "sum_shared_learnable_matrix", "sum_unshared", "sum_user_first"])
@pytest.mark.parametrize("reverse", [False, True])
def test_energy_and_grad_of_a_sum_backpropagates_to_y(name, reverse):
    """Through ``y`` (iterates of an unrolled solver) as through ``E(y, x)`` and ``E.grad(y, x)``
    computed apart: the in-place sum of the terms' gradients must not touch a tensor autograd
    saved for the energy value (it did, and backward raised)."""
    energies, _ = _energies(2)
    terms = list(energies[name].terms)
    E = ec.energies.SumEnergy(terms[::-1] if reverse else terms).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 7, 6, generator=g, dtype=F64)
    y = (x + 0.3 * torch.randn(x.shape, generator=g, dtype=F64)).requires_grad_(True)
    v = torch.randn(x.shape, generator=g, dtype=F64)
    params = [p for p in E.parameters() if p.requires_grad]

    def derivatives(value, grad):
        return torch.autograd.grad(value.sum() + (grad * v).sum(), [y, *params])

    fused = derivatives(*E.energy_and_grad(y, x))
    apart = derivatives(E(y, x), E.grad(y, x))  # the gradient-only sum adds in place, also under autograd
    for a, b in zip(fused, apart):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # and both are grad E + H v, from torch.func on the energy alone
    yd = y.detach()
    grad_fn = torch.func.grad(lambda t: E.energy(t, x).sum())
    _, hv = torch.func.jvp(grad_fn, (yd,), (v,))
    torch.testing.assert_close(apart[0], grad_fn(yd) + hv, rtol=1e-9, atol=1e-9)


def test_grad_works_inside_torch_func_transforms():
    torch.manual_seed(0)
    E = (K.Unary() + K.Pairwise(channels=2) + K.FieldOfExperts(channels=2, kernel_size=5)).double()
    x = torch.randn(3, 2, 7, 6, dtype=F64)
    y = x + 0.1
    per_sample = torch.func.vmap(lambda yy, xx: E.grad(yy[None], xx[None])[0])(y, x)
    torch.testing.assert_close(per_sample, E.grad(y, x), rtol=1e-12, atol=1e-12)
    v = torch.randn_like(y)
    _, hvp = torch.func.jvp(lambda yy: E.grad(yy, x), (y,), (v,))
    _, hvp_eg = torch.func.jvp(lambda yy: E.energy_and_grad(yy, x)[1], (y,), (v,))
    torch.testing.assert_close(hvp, hvp_eg, rtol=1e-12, atol=1e-12)
    # the Hessian-vector product of a quadratic energy from the analytic gradient is exact
    Eq = (K.Unary() + K.Pairwise(channels=2)).double()
    _, hq = torch.func.jvp(lambda yy: Eq.grad(yy, x), (y,), (v,))
    torch.testing.assert_close(hq, Eq.grad(v, torch.zeros_like(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("H,W", [(1, 1), (2, 7), (5, 5), (9, 4), (16, 13)])
def test_degree_closed_form_matches_the_message_of_ones(H, W):
    for kernel in (K.LocalKernel(radius=2), K.LocalKernel(radius=1, sigma=0.7, strength=2.0),
                   K.LocalKernel(radius=2, learnable=True)):
        kernel = kernel.double()
        ones = torch.ones(1, 1, H, W, dtype=F64)
        torch.testing.assert_close(kernel.degree(H, W, F64, "cpu"), kernel.message(ones)[0, 0],
                                   rtol=1e-14, atol=1e-14)


def test_grid_constants_are_built_once_outside_transforms_and_afresh_inside():
    """The border masks and Fourier factors are memoised per size, dtype and device (the same
    object on a second call, a different one for another size); inside a ``torch.func`` transform
    they are built afresh and do not enter the memo (a tensor made there belongs to the transform),
    so a degree under ``jacfwd`` and after it both equal the message of ones."""
    from energycrf.energies.kernels import _inside
    from energycrf.energies.operators import _fourier_factors

    _inside.cache_clear()
    a = _inside(9, 2, F64, torch.device("cpu"))
    assert _inside(9, 2, F64, torch.device("cpu")) is a and _inside(10, 2, F64, torch.device("cpu")) is not a
    assert _fourier_factors(8, 6, 3, True, F64, torch.device("cpu"))[0] is _fourier_factors(8, 6, 3, True, F64,
                                                                                          torch.device("cpu"))[0]
    kernel = K.LocalKernel(radius=2).double()
    ones = torch.ones(1, 1, 11, 7, dtype=F64)
    _inside.cache_clear()
    inside = torch.func.jacfwd(lambda s: s * kernel.degree(11, 7, F64, torch.device("cpu")))(torch.ones((), dtype=F64))
    torch.testing.assert_close(inside, kernel.message(ones)[0, 0], rtol=1e-14, atol=1e-14)
    assert not torch._C._functorch.is_functorch_wrapped_tensor(_inside(11, 2, F64, torch.device("cpu")))
    torch.func.hessian(lambda s: (s * kernel.degree(11, 7, F64, torch.device("cpu"))).sum())(torch.ones((), dtype=F64))
    torch.testing.assert_close(kernel.degree(11, 7, F64, torch.device("cpu")), kernel.message(ones)[0, 0],
                               rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("B,C,M,H,W,s", [(2, 4, 8, 7, 5, 5), (1, 1, 8, 1, 1, 5), (3, 2, 3, 6, 9, 3),
                                         (1, 4, 8, 2, 3, 7), (2, 3, 2, 1, 6, 1), (1, 4, 8, 16, 12, 5)])
def test_correlation_by_phases_equals_the_plain_correlation(B, C, M, H, W, s):
    """The FoE adjoint as one stride-2 convolution over the four output phases (few output
    channels, zero boundary) equals conv2d with padding, odd sizes included."""
    from energycrf.energies.operators import correlate, correlate_by_phases

    g = torch.Generator().manual_seed(B * 100 + H)
    w = torch.randn(C, M, s, s, generator=g, dtype=F64)
    u = torch.randn(B, M, H, W, generator=g, dtype=F64)
    out = correlate_by_phases(u, w)
    torch.testing.assert_close(out, correlate(u, w, "zeros"), rtol=1e-12, atol=1e-12)
    assert out.is_contiguous()
