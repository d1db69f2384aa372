"""Unary term (paper 3.2.1): conformance over the registry, the closed forms, bad arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.testing.strategies import positive_floats, shapes, tensors
from energycrf.testing.suite import RegistryConformance


class TestUnaryConformance(RegistryConformance):
    family = "unary"


@given(shape=shapes(), data=st.data())
def test_closed_forms(shape, data):
    """E = sum_c w_c ||y - x||^2, grad 2 w (y - x), A_i = 2 diag(w), margin 2 min w."""
    B, C, H, W = shape
    # parameters are stored in torch's default dtype (float32); compare with those values
    w = torch.tensor(data.draw(st.lists(positive_floats(), min_size=C, max_size=C))).double()
    y, x = data.draw(tensors(shape)), data.draw(tensors(shape))
    E = ec.energies.Unary(weight=w).double()
    wb = w.reshape(1, C, 1, 1)
    torch.testing.assert_close(E(y, x), (wb * (y - x) ** 2).sum((1, 2, 3)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(E.grad(y, x), 2 * wb * (y - x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(E.curvature(y, x), torch.diag(2 * w).expand(B, H, W, C, C), rtol=0, atol=0)
    assert E.convexity_margin() == pytest.approx(2 * float(w.min()), rel=1e-6)


def test_learnable_margin_gives_no_warning():
    """convexity_margin of a learnable weight is a plain float, computed without autograd warnings
    (the project turns warnings into errors)."""
    E = ec.energies.Unary(weight=2.0, learnable=True)
    assert E.convexity_margin() == pytest.approx(4.0)


@pytest.mark.parametrize("weight", [-1.0, 0.0, float("nan"), torch.tensor([1.0, -2.0])])
def test_bad_weight(weight):
    with pytest.raises(ValueError, match="weight"):
        ec.energies.Unary(weight=weight)


def test_bad_weight_shape():
    with pytest.raises(ValueError, match=r"weight.*\[C\].*\(2, 2\)"):
        ec.energies.Unary(weight=torch.ones(2, 2))


def test_per_channel_weight_checks_channels():
    E = ec.energies.Unary(weight=torch.ones(3))
    y = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match=r"(?s)4 channels.*channels=3"):
        E(y, y)


def test_weight_sequence_equals_weight_tensor():
    y, x = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)
    from_list = ec.energies.Unary(weight=[0.5, 1.0, 2.0]).double()
    from_tensor = ec.energies.Unary(weight=torch.tensor([0.5, 1.0, 2.0])).double()
    torch.testing.assert_close(from_list(y, x), from_tensor(y, x), rtol=0, atol=0)
    assert from_list.channels == 3
    with pytest.raises(TypeError, match="weight.*sequence of numbers"):
        ec.energies.Unary(weight=[1.0, "2"])
    with pytest.raises(ValueError, match="weight.*positive"):
        ec.energies.Unary(weight=[1.0, -2.0])


def test_sum_refuses_terms_of_different_channels():
    with pytest.raises(ValueError, match=r"same number of channels.*Pairwise\(channels=4\).*Unary\(channels=3\)"):
        ec.energies.Unary(weight=[1.0, 1.0, 1.0]) + ec.energies.Pairwise(channels=4)
