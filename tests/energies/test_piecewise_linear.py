"""The learned piecewise-linear expert: rho' is the linear interpolation of the knot values,
rho its exact integral from 0 (checked by quadrature), per-expert tables act on dimension 1,
gradients with respect to the knot values, the majoriser and min_curvature, bad arguments.
(The registry runs the whole conformance suite on FieldOfExperts with this expert.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from energycrf.energies import FieldOfExperts, PiecewiseLinear

finite = st.floats(-6, 6, allow_nan=False)


def _random(num_knots, span, experts, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (num_knots,) if experts is None else (experts, num_knots)
    values = torch.randn(shape, generator=g)
    return PiecewiseLinear(num_knots, span, experts, init=values, learnable=False).double()


@given(knots=st.integers(2, 12), span=st.floats(0.3, 4.0), seed=st.integers(0, 2**16),
       u=st.lists(finite, min_size=1, max_size=12), d=st.lists(finite, min_size=12, max_size=12))
def test_shared_expert_against_interpolation_quadrature_and_autograd(knots, span, seed, u, d):
    pot = _random(knots, span, None, seed)
    u = torch.tensor(u, dtype=torch.float64)
    grid = np.linspace(-span, span, knots)
    values = pot.values.detach().numpy()
    # rho' is numpy's linear interpolation (constant beyond the end knots)
    np.testing.assert_allclose(pot.rho_prime(u).detach().numpy(), np.interp(u.numpy(), grid, values), rtol=1e-12, atol=1e-12)
    # rho' is the derivative of rho (autograd)
    torch.testing.assert_close(torch.func.grad(lambda v: pot.rho(v).sum())(u), pot.rho_prime(u), rtol=1e-10, atol=1e-10)
    # rho(u) = integral of rho' from 0 to u (dense trapezoid quadrature of the interpolant)
    for value in u.tolist():
        t = np.linspace(0.0, value, 40001)
        want = np.trapezoid(np.interp(t, grid, values), t)
        assert abs(float(pot.rho(torch.tensor(value, dtype=torch.float64))) - want) < 1e-6 * (1 + abs(want))
    # majoriser inequality and the lower curvature bound
    delta = torch.tensor(d[: len(u)], dtype=torch.float64)
    a = pot.majorizer_weight(u)
    assert bool((a >= 0).all())
    bound = pot.rho(u) + pot.rho_prime(u) * delta + 0.5 * a * delta**2
    assert bool((pot.rho(u + delta) <= bound + 1e-9 * (1 + bound.abs())).all())
    slopes = np.diff(values) / (grid[1] - grid[0])
    assert pot.min_curvature == pytest.approx(min(slopes.min(), 0.0), rel=1e-12, abs=1e-12)


@given(experts=st.integers(1, 4), knots=st.integers(2, 9), seed=st.integers(0, 2**16))
def test_per_expert_tables_act_on_dimension_one(experts, knots, seed):
    pot = _random(knots, 1.5, experts, seed)
    u = 2 * torch.randn(2, experts, 3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for m in range(experts):
        single = PiecewiseLinear(knots, 1.5, None, init=pot.values.detach()[m]).double()
        torch.testing.assert_close(pot.rho(u)[:, m], single.rho(u[:, m]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pot.rho_prime(u)[:, m], single.rho_prime(u[:, m]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pot.majorizer_weight(u)[:, m], single.majorizer_weight(u[:, m]))


@pytest.mark.parametrize("experts", [None, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_planes_without_a_graph_give_the_interpolant(experts, dtype):
    """Without a graph and with planes of at least _CACHED_PLANE elements, rho' goes plane by
    plane: the same values as numpy's interpolation, and as the one-pass evaluation with a graph."""
    from energycrf.energies import potentials

    pot = _random(7, 2.0, experts, 5).to(dtype)
    side = int(np.ceil(np.sqrt(potentials._CACHED_PLANE)))
    g = torch.Generator().manual_seed(1)
    u = 3 * torch.randn(2, experts or 2, side, side, generator=g, dtype=dtype)
    u[0, 0, 0, :9] = torch.linspace(-2, 2, 7 + 2, dtype=dtype)[:9]  # knots and between
    u[1, -1, 0, :3] = torch.tensor([-2.0, 2.0, 9.0], dtype=dtype)  # the ends and beyond
    with torch.no_grad():
        planes = pot.rho_prime(u)
    one_pass = pot.rho_prime(u.clone().requires_grad_()).detach()
    torch.testing.assert_close(planes, one_pass, rtol=0, atol=0)
    with torch.no_grad():  # an empty batch of large planes: an empty answer, not an error
        assert pot.rho_prime(u[:0]).shape == (0, *u.shape[1:])
    grid = np.linspace(-2, 2, 7)
    tables = pot.values.detach().double().numpy().reshape(-1, 7)
    for b in range(2):
        for m in range(u.shape[1]):
            want = np.interp(u[b, m].double().numpy(), grid, tables[m if experts else 0])
            np.testing.assert_allclose(planes[b, m].double().numpy(), want, rtol=0,
                                       atol=1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_many_experts_in_half_precision_look_up_their_own_rows(dtype):
    """The staged denoiser's 24 experts x 63 knots (and 48 x 63): the flat row offsets pass 256
    and 2048, where bfloat16 and float16 stop holding whole numbers. Expert m's table is the
    constant c_m, so rho'(u) = c_m and rho(u) = c_m u exactly: a value from another row is off by
    a multiple of 1 / experts, far above half-precision rounding."""
    for experts in (24, 48):
        c = (torch.arange(experts, dtype=torch.float64) + 1) / experts
        pot = PiecewiseLinear(63, 4.0, experts, init=c[:, None].expand(experts, 63).clone(), learnable=False).to(dtype)
        u = (3 * torch.randn(2, experts, 4, 5, generator=torch.Generator().manual_seed(1))).to(dtype)
        cm = c.view(1, -1, 1, 1)
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(pot.rho_prime(u).double(), cm.expand(u.shape), rtol=2 * eps, atol=0)
        torch.testing.assert_close(pot.rho(u).double(), cm * u.double(), rtol=0, atol=16 * eps * 4.0)


def test_init_forms():
    u = torch.linspace(-3, 3, 41, dtype=torch.float64)
    linear = PiecewiseLinear(num_knots=5, span=4.0, init="linear", alpha=0.7).double()
    torch.testing.assert_close(linear.rho(u), 0.35 * u**2)  # exact: the interpolant of a line is the line
    student = PiecewiseLinear(num_knots=201, span=4.0, init="student_t", alpha=1.2).double()
    torch.testing.assert_close(student.rho(u), 1.2 * torch.log1p(0.5 * u**2), rtol=0, atol=2e-4)


class _GradOf(torch.nn.Module):
    def __init__(self, energy):
        super().__init__()
        self.energy = energy

    def forward(self, y):
        return self.energy.grad(y, y)


def test_gradients_with_respect_to_knot_values():
    """The values are parameters: autograd through the energy and through its analytic
    gradient matches finite differences (gradcheck), which training through solver steps needs."""
    torch.manual_seed(0)
    foe = FieldOfExperts(channels=1, num_filters=3, kernel_size=3, init_scale=1.0,
                         potential=PiecewiseLinear(7, 2.0, num_experts=3)).double()
    y = 2 * torch.randn(2, 1, 6, 5, dtype=torch.float64)
    values = foe.potential.values.detach().clone().requires_grad_(True)
    call = torch.func.functional_call
    assert torch.autograd.gradcheck(lambda v: call(foe, {"potential.values": v}, (y, y)), (values,))
    assert torch.autograd.gradcheck(lambda v: call(_GradOf(foe), {"energy.potential.values": v}, (y,)), (values,))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PiecewiseLinear(num_knots=1), r"num_knots.*int >= 2.*1"),
        (lambda: PiecewiseLinear(num_knots=3.0), r"num_knots.*int >= 2.*3.0"),
        (lambda: PiecewiseLinear(span=0.0), r"span.*positive"),
        (lambda: PiecewiseLinear(num_experts=0), r"num_experts.*None or an int >= 1.*0"),
        (lambda: PiecewiseLinear(init="cubic"), r"init.*'student_t', 'linear' or a tensor.*cubic"),
        (lambda: PiecewiseLinear(num_knots=4, init=torch.zeros(5)), r"init.*shape \(4,\).*\(5,\)"),
        (lambda: PiecewiseLinear(num_knots=3, init=torch.zeros(3, dtype=torch.long)), r"init.*floating.*int64"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("method", ["rho", "rho_prime", "majorizer_weight"])
def test_responses_with_the_wrong_number_of_experts(method):
    with pytest.raises(ValueError, match=r"u: expected responses \[B, 3, \.\.\.\].*\(2, 4, 5, 5\)"):
        getattr(PiecewiseLinear(num_experts=3), method)(torch.zeros(2, 4, 5, 5))
