"""Expert potentials rho: conformance of FieldOfExperts with each expert, rho' against
autograd, the majoriser inequality of each potential, min_curvature, a user's expert with
only ``rho`` (fallbacks), bad arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.testing.suite import EnergyConformance, RegistryConformance

P = ec.energies.potentials

POTENTIALS = {
    "relu": lambda: P.ReLUExpert(),
    "student_t": lambda: P.StudentT(alpha=1.7),
    "charbonnier": lambda: P.Charbonnier(eps=0.2),
    "huber": lambda: P.Huber(delta=0.3),
}


class Lorentzian(P.Potential):
    """A user's expert with only ``rho``: log(1 + u^2); rho(sqrt(s)) is concave, so the
    half-quadratic fallback weight rho'(u)/u majorises it."""

    min_curvature = -0.25

    def rho(self, u):
        return torch.log1p(u**2)


POTENTIALS["user_lorentzian"] = Lorentzian


class TestPotentialsConformance(RegistryConformance):
    family = "potentials"


class TestUserPotentialInFieldOfExperts(EnergyConformance):
    """A researcher's new expert plugs into FieldOfExperts and passes the whole suite."""

    builtin = True

    def make_energy(self, case):
        with case.seeded():
            return ec.energies.FieldOfExperts(channels=case.channels, num_filters=2, kernel_size=3,
                                              potential=Lorentzian(), init_scale=1.0)


finite = st.floats(-6, 6, allow_nan=False)


@pytest.mark.parametrize("name", sorted(POTENTIALS))
@given(u=st.lists(finite, min_size=1, max_size=8), d=st.lists(finite, min_size=8, max_size=8))
def test_rho_prime_majorizer_and_min_curvature(name, u, d):
    pot = POTENTIALS[name]()
    u = torch.tensor(u, dtype=torch.float64)
    delta = torch.tensor(d[: len(u)], dtype=torch.float64)
    ref = torch.func.grad(lambda v: pot.rho(v).sum())(u)
    torch.testing.assert_close(pot.rho_prime(u), ref, rtol=1e-10, atol=1e-10)
    a = pot.majorizer_weight(u)
    assert bool((a >= 0).all())
    bound = pot.rho(u) + pot.rho_prime(u) * delta + 0.5 * a * delta**2
    assert bool((pot.rho(u + delta) <= bound + 1e-9 * (1 + bound.abs())).all())
    second = torch.func.vmap(torch.func.grad(torch.func.grad(lambda v: pot.rho(v))))(u)
    assert bool((second >= pot.min_curvature - 1e-9).all())


def test_relu_expert_values():
    """Paper eq. 10: rho = -1/2 relu(u)^2 for u > 0, -log eps otherwise; rho' = -relu."""
    u = torch.tensor([-2.0, 0.0, 0.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(P.ReLUExpert().rho(u), torch.tensor([0.0, 0.0, -0.125, -4.5], dtype=torch.float64))
    eps = 0.25
    got = P.ReLUExpert(eps=eps).rho(u)
    want = torch.tensor([-torch.log(torch.tensor(eps)).item()] * 2 + [-0.125, -4.5], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(P.ReLUExpert(eps=eps).rho_prime(u), -torch.relu(u))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: P.ReLUExpert(eps=0.0), r"eps.*positive.*0"),
        (lambda: P.ReLUExpert(eps=-1.0), r"eps.*positive.*-1"),
        (lambda: P.StudentT(alpha=0.0), r"alpha.*positive"),
        (lambda: P.Charbonnier(eps=-0.1), r"eps.*positive"),
        (lambda: P.Huber(delta=0.0), r"delta.*positive"),
        (lambda: P.StudentT(alpha="1"), r"alpha.*positive number.*str"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_student_t_per_expert_weights():
    """num_experts=M gives expert m the weight alpha_m (dimension 1 of the responses), learnable
    through log_alpha; a response tensor with another expert count is refused; min_curvature is
    the largest weight's."""
    pot = P.StudentT(alpha=0.5, num_experts=3, learnable=True)
    with torch.no_grad():
        pot.log_alpha.copy_(torch.tensor([0.5, 1.0, 2.0]).log())
    u = torch.randn(2, 3, 4, 5)
    weights = torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(pot.rho(u), weights * torch.log1p(0.5 * u**2))
    torch.testing.assert_close(pot.rho_prime(u), weights * u / (1 + 0.5 * u**2))
    torch.testing.assert_close(pot.majorizer_weight(u), weights / (1 + 0.5 * u**2))
    assert pot.min_curvature == pytest.approx(-2.0 / 8)
    pot.rho(u).sum().backward()
    assert pot.log_alpha.grad is not None and pot.log_alpha.grad.shape == (3,)
    with pytest.raises(ValueError, match=r"u: expected responses \[B, 3, \.\.\.\]"):
        pot.rho(torch.randn(2, 4, 4, 5))
    with pytest.raises(ValueError, match="num_experts: expected None or an int >= 1, got 0"):
        P.StudentT(num_experts=0)
    with pytest.raises(TypeError, match="learnable: expected a bool, got int"):
        P.StudentT(learnable=1)
    shared = P.StudentT(alpha=1.7)  # the plain form keeps a float weight and no parameter
    assert shared.alpha == 1.7 and not list(shared.parameters())
