"""Well-posedness: the convexity margin 2 w - sum_m ||C_m||^2 bounds the Hessian from below,
check_well_posed warns or raises by option, and the paper's ReLU-expert energy with large
filters really is unbounded below."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.testing import full_hessian
from energycrf.testing.strategies import positive_floats

K = ec.energies


def _paper_energy(scale, w=1.0, seed=0, channels=2, zero_center=True):
    torch.manual_seed(seed)
    foe = K.FieldOfExperts(channels=channels, num_filters=2, kernel_size=3, zero_center=zero_center,
                           init_scale=scale)
    return (K.Unary(weight=w) + K.Pairwise(channels=channels) + foe).double()


@given(scale=positive_floats(0.05, 2.5), w=positive_floats(0.2, 2.0), seed=st.integers(0, 1000))
def test_margin_is_the_formula_and_a_hessian_lower_bound(scale, w, seed):
    E = _paper_energy(scale, w, seed)
    norms = E["field_of_experts"].operator_norms()
    margin = E.convexity_margin()
    w_stored = float(E["unary"].weight())  # the weight as stored (torch's default dtype)
    assert margin == pytest.approx(2 * w_stored - float(norms.sum()), rel=1e-9, abs=1e-9)
    # ||C_m||^2 <= (sum |J_m|)^2 (the cheap bound of energy-model.md)
    J = E["field_of_experts"].filters().detach().double()
    assert bool((norms <= J.abs().flatten(1).sum(1) ** 2 + 1e-9).all())
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64)
    x = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64)
    hess = full_hessian(E, y, x).reshape(60, 60)
    assert float(torch.linalg.eigvalsh(hess).min()) >= margin - 1e-9


def test_check_well_posed_by_option():
    good = _paper_energy(0.05)
    bad = _paper_energy(3.0)
    assert good.convexity_margin() > 0 > bad.convexity_margin()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert good.check_well_posed(on_fail="raise") == pytest.approx(good.convexity_margin())
        assert good.check_well_posed(on_fail="warn") == pytest.approx(good.convexity_margin())
        assert bad.check_well_posed(on_fail="ignore") == pytest.approx(bad.convexity_margin())
    with pytest.raises(K.IllPosedEnergyError, match="unbounded below"):
        bad.check_well_posed(on_fail="raise")
    with pytest.warns(K.EnergyWarning, match="unbounded below"):
        bad.check_well_posed(on_fail="warn")
    with pytest.warns(K.EnergyWarning):
        bad.check_well_posed()  # warn is the default


def test_zero_margin_counts_as_ill_posed():
    E = K.Pairwise(channels=2)  # PSD, margin exactly 0: constant shifts cost nothing
    assert E.convexity_margin() == 0
    with pytest.raises(K.IllPosedEnergyError):
        E.check_well_posed(on_fail="raise")


def test_unknown_margin_of_a_user_term():
    class Mine(ec.Energy):
        def energy(self, y, x, c=None):
            return (y**2).sum((1, 2, 3))

    E = K.Unary() + Mine()
    assert E.convexity_margin() is None
    with pytest.raises(K.IllPosedEnergyError, match="unknown"):
        E.check_well_posed(on_fail="raise")
    with pytest.warns(K.EnergyWarning, match="unknown"):
        E.check_well_posed(on_fail="warn")


def _worst_direction(foe, H=7, W=7):
    """v = filter 0 laid on the image around the centre: the centre response is ||J_0||^2."""
    J = foe.filters().detach().double()[0]  # [C, s, s]
    s = J.shape[-1]
    v = torch.zeros(1, J.shape[0], H, W, dtype=torch.float64)
    h0, w0 = H // 2 - s // 2, W // 2 - s // 2
    v[0, :, h0 : h0 + s, w0 : w0 + s] = J
    return v


def test_relu_expert_energy_with_large_filters_is_unbounded_below():
    """E(t v) = t^2 (||v||^2 + v^T L v - 1/2 sum relu(J v)^2) -> -inf when ||J_0||^2 is large."""
    E = _paper_energy(3.0)
    foe = E["field_of_experts"]
    assert E.convexity_margin() < 0
    v = _worst_direction(foe)
    u = foe.responses(v).detach()
    assert float(u[0, 0, 3, 3]) == pytest.approx(float((v**2).sum()), rel=1e-6)
    x = torch.zeros_like(v)
    with torch.no_grad():
        values = [float(E(t * v, x)) for t in (1.0, 10.0, 100.0, 1000.0)]
    assert all(b < a for a, b in zip(values, values[1:])), values
    assert values[-1] < -1e6
    # quadratic growth: E(t v) / t^2 is a negative constant
    assert values[-1] / 1000.0**2 == pytest.approx(values[-2] / 100.0**2, rel=1e-9)


def test_well_posed_energy_grows_along_the_same_direction():
    E = _paper_energy(0.05)
    assert E.convexity_margin() > 0
    v = _worst_direction(E["field_of_experts"])
    v = v / v.norm()
    x = torch.zeros_like(v)
    with torch.no_grad():
        values = [float(E(t * v, x)) for t in (1.0, 10.0, 100.0)]
    assert all(b > a for a, b in zip(values, values[1:])) and values[-1] > 0
