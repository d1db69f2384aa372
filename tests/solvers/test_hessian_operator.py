"""The solvers' Hessian applier (:class:`energycrf.solvers.hessian.HessianOperator`) on the
energies' plain Hessian structures (:class:`energycrf.energies.HessianStructure`): ``(s H + t I) v``
equals the energy's Hessian from autograd (the dense matrix of each sample, and a
forward-over-reverse product of the batch) for every kind of quadratic term, sum and scaling;
the structures keep nothing and compose as documented."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import energycrf as ec
from energycrf.solvers.hessian import HessianOperator

from solver_problems import BoxSmooth, explicit_hessian, random_compat

K = ec.energies
F64 = torch.float64

ENERGIES = {
    "unary": lambda: K.Unary(weight=[0.5, 2.0]),
    "unary_learnable": lambda: K.Unary(weight=0.8, learnable=True),
    "pairwise": lambda: K.Pairwise(channels=2),
    "pairwise_circular": lambda: K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1, boundary="circular")),
    "pairwise_matrix": lambda: K.Pairwise(channels=2, compatibility=random_compat(2, 3)),
    "pairwise_text": lambda: K.Pairwise(channels=2, compatibility="text", cond_dim=3),
    "long_range": lambda: K.Pairwise(channels=2, kernel=K.LongRangeKernel(sigma=1.5, weight=0.3, boundary="zeros")),
    "scaled_sum": lambda: 2.5 * (K.Unary(weight=0.5) + K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1))),
    "sum_with_user_term": lambda: K.Unary() + K.Pairwise(channels=2) + BoxSmooth(0.5),
    "user_term": lambda: BoxSmooth(0.7),
}


@pytest.mark.parametrize("name", sorted(ENERGIES))
@pytest.mark.parametrize("scale, shift", [(1.0, 0.0), (-0.3, 0.0), (0.4, 0.7), (-0.3, 0.7)])
def test_the_operator_applies_the_energys_hessian(name, scale, shift):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        E = ENERGIES[name]().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 4, 5, generator=g, dtype=F64)
    v = torch.randn(x.shape, generator=g, dtype=F64)
    c = torch.randn(2, 3, generator=g, dtype=F64) if name == "pairwise_text" else None
    operator = HessianOperator.of_energy(E, x, c)
    with torch.no_grad():
        got = operator(v, scale, shift)
        again = operator(v, scale, shift)  # with the kept shifted diagonal
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    for b in range(x.shape[0]):
        Hm = explicit_hessian(E, x[b:b + 1], x[b:b + 1], None if c is None else c[b:b + 1]).detach()
        want = scale * (Hm @ v[b].reshape(-1)) + shift * v[b].reshape(-1)
        torch.testing.assert_close(got[b].reshape(-1), want, rtol=1e-11, atol=1e-11)
    hvp = torch.func.jvp(torch.func.grad(lambda y: E.energy(y, x, c).sum()), (x,), (v,))[1].detach()
    torch.testing.assert_close(got, scale * hvp + shift * v, rtol=1e-11, atol=1e-11)


def test_structures_compose_and_keep_nothing():
    """A sum's structure keeps its terms' as parts (a scaling's does not: its parts would be
    unscaled), its diagonal is the sum of theirs, and a structure cannot be changed (nothing is
    kept on it between products)."""
    E = (K.Unary(weight=[0.5, 2.0]) + K.Pairwise(channels=2) + BoxSmooth(0.5)).double()
    x = torch.randn(1, 2, 4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    structure = E._hessian_structure(x, None)
    unary, pairwise, user = structure.parts
    assert user.diagonal is None and unary.rest is None
    torch.testing.assert_close(structure.diagonal, unary.diagonal + pairwise.diagonal)
    assert K.ScaledEnergy(E, 2.0)._hessian_structure(x, None).parts is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        structure.diagonal = None
    assert not any(isinstance(value, dict) for value in vars(structure).values())
