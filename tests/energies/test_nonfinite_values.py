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


def test_a_solve_reports_divergence_once_not_a_warning_per_evaluation():
    """The solvers judge every value themselves (a non-finite one is a diverged sample), so their
    evaluations run under ``unchecked_values``: one DivergenceWarning, no EnergyWarning."""
    torch.manual_seed(0)
    E = (ec.energies.Unary(weight=0.01)
         + ec.energies.FieldOfExperts(channels=1, num_filters=4, kernel_size=5, init_scale=3.0)).double()
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ec.solve(E, x, method="coordinate_descent", max_iters=200, well_posed="ignore")
    kinds = [type(w.message).__name__ for w in caught]
    assert res.status == ["diverged", "diverged"], res.summary()
    assert "EnergyWarning" not in kinds and kinds.count("DivergenceWarning") == 1, kinds
    with ec.energies.unchecked_values():  # also for a user's own loop
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not bool(torch.isfinite(_energy()(1e20 * x.float().expand(-1, 4, -1, -1), x.float().expand(-1, 4, -1, -1))).all())


def test_a_non_finite_start_is_refused_naming_the_samples():
    E = _energy()
    x = torch.randn(2, 4, 8, 8)
    y0 = x.clone()
    y0[1] *= 1e20
    with pytest.raises(ValueError, match=r"start point \(x, or y0 when given\) of sample\(s\) \[1\].*overflow"):
        ec.solve(E, x, y0=y0, well_posed="ignore")
