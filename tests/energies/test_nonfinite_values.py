"""A non-finite energy is never silent: at finite inputs it is an overflow of the dtype, said so
by an EnergyWarning that names the samples; the same call in float64 is finite and quiet."""

from __future__ import annotations

import warnings

import pytest
import torch

import energycrf as ec


def _energy():
    torch.manual_seed(0)
    return (ec.energies.Unary() + ec.energies.Pairwise(channels=4)
            + ec.energies.FieldOfExperts(channels=4, num_filters=4, kernel_size=3))


@pytest.mark.parametrize("call", ["forward", "energy_and_grad"])
def test_an_overflow_in_float32_is_reported_with_its_cause(call):
    E = _energy()
    x = torch.randn(2, 4, 8, 8)
    y = x.clone()
    y[1] *= 1e20  # sample 1 only
    with pytest.warns(ec.energies.EnergyWarning, match=r"sample\(s\) \[1\].*overflows torch.float32"):
        value = E(y, x) if call == "forward" else E.energy_and_grad(y, x)[0]
    assert bool(torch.isfinite(value[0])) and not bool(torch.isfinite(value[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        E64 = _energy().double()
        assert bool(torch.isfinite(E64(y.double(), x.double())).all())


def test_non_finite_inputs_are_named_as_the_cause():
    E = _energy()
    x = torch.randn(1, 4, 8, 8)
    y = x.clone()
    y[0, 0, 0, 0] = float("nan")
    with pytest.warns(ec.energies.EnergyWarning, match="y or x holds non-finite values"):
        E(y, x)
