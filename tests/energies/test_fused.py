"""The convolution hook of a sum (``_convolution_request``, :mod:`energycrf.energies.fused`): a
user's term that offers it shares one convolution with a Field of Experts (as a guest) or with
a local Pairwise term (as a host) and gives the values and gradients of the terms apart
(float64, against autograd); the pairing is the documented one (each guest with the first free
host of its window size and boundary), and terms that offer nothing compute their own."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import energycrf as ec
from energycrf.energies import fused
from energycrf.energies.fused import ConvolutionRequest, shared_convolutions
from energycrf.energies.operators import correlate, correlate_adjoint

K = ec.energies
F64 = torch.float64


def _difference_bank(channels: int, size: int) -> torch.Tensor:
    """Horizontal and vertical differences of every channel, ``[2 C, C, s, s]`` (centred window)."""
    bank = torch.zeros(2 * channels, channels, size, size, dtype=F64)
    r = size // 2
    for k in range(channels):
        bank[2 * k, k, r, r], bank[2 * k, k, r, r + 1] = -1.0, 1.0
        bank[2 * k + 1, k, r, r], bank[2 * k + 1, k, r + 1, r] = -1.0, 1.0
    return bank


class SquaredResponses(ec.Energy):
    r"""A user's quadratic filter term :math:`\tfrac{w}{2} \sum \|D \star y\|^2` that offers the hook
    (as a guest by default, as a host with ``host=True``); it counts its own convolutions."""

    def __init__(self, channels: int, size: int = 3, weight: float = 0.7, host: bool = False,
                 boundary: str = "zeros"):
        super().__init__()
        self.register_buffer("filters", _difference_bank(channels, size))
        self.weight, self.host, self.boundary, self.own = weight, host, boundary, 0

    def energy(self, y, x, c=None):
        self.own += 1
        return self._shared_energy(y, x, c, correlate(y, self.filters.to(y), self.boundary), None)

    def _grad(self, y, x, c):
        return self._energy_and_grad(y, x, c, with_energy=False)[1]

    def _convolution_request(self, y):
        return ConvolutionRequest(self.filters.shape[-1], self.boundary, lambda: self.filters.to(y), host=self.host)

    def _shared_energy(self, y, x, c, convolved, bank):
        return 0.5 * self.weight * convolved.square().sum((1, 2, 3))

    def _energy_and_grad(self, y, x, c, with_energy=True, convolved=None, bank=None):
        if convolved is None:
            self.own += 1
            bank = self.filters.to(y)
            convolved = correlate(y, bank, self.boundary)
        value = self._shared_energy(y, x, c, convolved, bank) if with_energy else None
        return value, correlate_adjoint(self.weight * convolved, bank, self.boundary)


def _data(channels=2, batch=2, H=7, W=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, H, W, generator=g, dtype=F64)
    return x + 0.3 * torch.randn(x.shape, generator=g, dtype=F64), x


def _apart(E, y, x):
    """The terms' values and autograd gradients, each term evaluated on its own."""
    value = sum(t.energy(y, x) for t in E.terms)
    grad = sum(torch.func.grad(lambda v, t=t: t.energy(v, x).sum())(y) for t in E.terms)
    return value, grad


@pytest.mark.parametrize("make, pairs", [
    (lambda: K.Unary() + SquaredResponses(2) + K.FieldOfExperts(channels=2, num_filters=3, kernel_size=3), {1, 2}),
    (lambda: SquaredResponses(2, host=True) + K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1)), {0, 1}),
    (lambda: K.FieldOfExperts(channels=2, num_filters=2, kernel_size=5, boundary="circular", potential=K.StudentT())
     + SquaredResponses(2, size=5, boundary="circular"), {0, 1}),
])
def test_a_users_term_that_offers_the_hook_shares_one_convolution(make, pairs):
    E = make().double()
    y, x = _data()
    user = next(t for t in E.terms if isinstance(t, SquaredResponses))
    assert set(shared_convolutions(list(E.terms), y)) == pairs
    with mock.patch.object(fused, "correlate", wraps=fused.correlate) as shared:
        value = E(y, x)
        both, grad = E.energy_and_grad(y, x)
        only = E.grad(y, x)
    assert shared.call_count == 3 and user.own == 0  # one shared convolution per evaluation, none of its own
    ref_value, ref_grad = _apart(E, y, x)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(both, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(only, ref_grad, rtol=1e-11, atol=1e-11)


def test_a_users_term_without_a_partner_computes_its_own():
    E = (K.Unary() + SquaredResponses(2) + K.FieldOfExperts(channels=2, kernel_size=5)).double()  # sizes differ
    y, x = _data()
    assert shared_convolutions(list(E.terms), y) == {}
    value, grad = E.energy_and_grad(y, x)
    assert E.terms[1].own == 1
    ref_value, ref_grad = _apart(E, y, x)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-11, atol=1e-11)


def test_each_guest_pairs_with_the_first_free_host_of_its_window_and_boundary():
    terms = [
        K.FieldOfExperts(channels=2, num_filters=2, kernel_size=3),  # 0: host, 3 x 3
        K.FieldOfExperts(channels=2, num_filters=2, kernel_size=5),  # 1: host, 5 x 5
        K.Pairwise(channels=2, kernel=K.LocalKernel(radius=2)),  # 2: guest, 5 x 5 -> 1
        K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1)),  # 3: guest, 3 x 3 -> 0
        K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1)),  # 4: guest, 3 x 3, no free host left
        K.FieldOfExperts(channels=2, num_filters=2, kernel_size=3, boundary="circular"),  # 5: other boundary
        2.0 * K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1, boundary="circular")),  # 6: a scaling offers none
        K.Unary(),
    ]
    E = K.SumEnergy(terms).double()
    y, x = _data(H=8, W=7)
    with mock.patch.object(fused, "correlate", wraps=fused.correlate) as shared:
        got = shared_convolutions(list(E.terms), y)
    assert set(got) == {0, 1, 2, 3} and shared.call_count == 2
    assert got[0]["convolved"].shape[1] == 2 and got[3]["convolved"].shape[1] == 2  # M FoE channels, C pairwise
    assert got[0]["bank"].shape[-1] == got[3]["bank"].shape[-1] == 3
    assert got[1]["bank"].shape[-1] == got[2]["bank"].shape[-1] == 5
    value, grad = E.energy_and_grad(y, x)
    ref_value, ref_grad = _apart(E, y, x)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-11, atol=1e-11)


def test_subclasses_of_the_built_in_terms_compute_their_own():
    """A subclass may evaluate differently: the built-in terms offer their request as themselves only."""

    class MyPairwise(K.Pairwise):
        pass

    class MyFoE(K.FieldOfExperts):
        pass

    y = torch.zeros(1, 2, 6, 6)
    pair = K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1))
    foe = K.FieldOfExperts(channels=2, kernel_size=3)
    assert isinstance(pair._convolution_request(y), ConvolutionRequest) and not pair._convolution_request(y).host
    assert foe._convolution_request(y).host
    assert MyPairwise(channels=2, kernel=K.LocalKernel(radius=1))._convolution_request(y) is None
    assert MyFoE(channels=2, kernel_size=3)._convolution_request(y) is None
    assert K.Pairwise(channels=2, kernel=K.LongRangeKernel())._convolution_request(y) is None
    assert ec.Energy()._convolution_request(y) is None and (2.0 * foe)._convolution_request(y) is None
