"""The quadratic part of an energy, which the Chebyshev preconditioner and the quadratic start
are built on: the terms' quadratic anchors (where their gradient vanishes, against autograd),
the gradient at the data from the prepared Hessian operators alone, sums of prepared operators,
the quadratic part kept per energy, and the start ``y0 = x - P grad E_q(x)`` whose error shrinks
by the preconditioner's accuracy in the energy norm."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.solvers.base import Problem
from energycrf.solvers.hessian import HessianOperator
from energycrf.solvers.preconditioners import chebyshev as cheb
from energycrf.solvers.quadratic_part import _KEPT_PARTS, quadratic_part
from energycrf.solvers.start import gradient_at_data, quadratic_start

from solver_problems import (BoxSmooth, SiteWeightedUnary, exact_quadratic_minimiser, explicit_hessian,
                             unary_pairwise_case, unary_pairwise_params)

K = ec.energies
F64 = torch.float64


def test_a_kept_shifted_diagonal_does_not_cut_the_graph():
    """A shifted diagonal kept without a graph is not reused while autograd records: the product's
    gradient in a learnable weight stays exact (against autograd of the explicit formula)."""
    E = (K.Unary(weight=0.6, learnable=True) + K.Pairwise(channels=2)).double()
    x = torch.randn(1, 2, 5, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    operator = HessianOperator.of_energy(E, x, None)  # its diagonal 2 w + 2 d records w
    with torch.no_grad():
        operator(v, 0.5, 0.2)
    (w_grad,) = torch.autograd.grad(operator(v, 0.5, 0.2).sum(), E.terms[0].log_weight)
    w = E.terms[0].log_weight.detach().exp()
    torch.testing.assert_close(w_grad, (0.5 * 2 * w * v).sum().reshape(w_grad.shape), rtol=1e-12, atol=1e-12)


class AnchoredBoxSmooth(BoxSmooth):
    quadratic_anchor = "zero"  # a homogeneous quadratic form: its gradient at 0 is 0


class AnchoredSiteUnary(SiteWeightedUnary):
    quadratic_anchor = "data"  # minimised at x, but its prepared operator is the bare product (no diagonal)


@given(params=unary_pairwise_params, extra_h=st.integers(0, 3), extra_w=st.integers(0, 3), scale=st.floats(0.2, 3.0))
def test_quadratic_anchors_are_where_the_gradient_vanishes(params, extra_h, extra_w, scale):
    """A term anchored at ``"data"`` has a zero gradient at ``y = x``, one anchored at ``"zero"`` at
    ``y = 0`` (autograd of the energy, any compatibility, boundary and scale): so its gradient is
    ``H (y - x)`` or ``H y``. A sum declares the common anchor, or none."""
    E, x, c = unary_pairwise_case(params, extra_h, extra_w)
    unary, pairwise = E.terms
    for term in (unary, pairwise, scale * unary, scale * pairwise):
        anchor = {"data": x, "zero": torch.zeros_like(x)}[term.quadratic_anchor]
        g = torch.func.grad(lambda y: term.energy(y, x, c).sum())(anchor).detach()
        assert float(g.abs().max()) <= 1e-12 * (1 + float(x.abs().max()))
    assert (unary.quadratic_anchor, pairwise.quadratic_anchor) == ("data", "zero")
    assert E.quadratic_anchor is None and (pairwise + 0.5 * pairwise).quadratic_anchor == "zero"
    assert ec.Energy.quadratic_anchor is None and K.FieldOfExperts(channels=1).quadratic_anchor is None


@given(params=unary_pairwise_params, extra_h=st.integers(0, 3), extra_w=st.integers(0, 3), scale=st.floats(0.2, 3.0))
def test_gradient_at_data_is_one_product_of_the_prepared_operator(params, extra_h, extra_w, scale):
    """``gradient_at_data`` equals autograd's gradient of the quadratic part at ``y = x`` (any
    weights, kernel boundary, compatibility, scale), by the prepared operator alone: the energy's
    gradient is never called."""
    E, x, c = unary_pairwise_case(params, extra_h, extra_w)
    E = scale * E if scale != 1.0 else E
    ref = torch.func.grad(lambda y: E.energy(y, x, c).sum())(x).detach()
    operator = HessianOperator.of_energy(E, x, c)
    with mock.patch.object(type(E), "grad", side_effect=AssertionError("E.grad called")):
        got = gradient_at_data(E, operator, x, c)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10 * (1 + float(ref.abs().max())))


class OwnOperatorSum(ec.energies.SumEnergy):
    """A sum whose Hessian structure is its bare product: no per-term parts to pick from."""

    def _hessian_structure(self, x, c):
        return K.HessianStructure.of_product(lambda v: self._hessian_vector_product(x, x, c, v))


@pytest.mark.parametrize("make, product", [
    (lambda: K.Unary(weight=0.7) + AnchoredBoxSmooth(0.5), True),  # a user term anchored at zero
    (lambda: K.Unary(weight=0.7) + BoxSmooth(0.5), False),  # no anchor: the energy's gradient
    (lambda: AnchoredSiteUnary(5, 6) + K.Pairwise(channels=2), True),  # at the data (not diagonal): nothing at x
    (lambda: K.Unary(weight=[0.5, 2.0]) + 2.0 * K.Unary(weight=0.3), True),  # data only: zero, no product
    (lambda: AnchoredSiteUnary(5, 6), True),  # one term at the data: zero
    (lambda: K.Pairwise(channels=2), True),  # one term at zero: its own operator
    (lambda: OwnOperatorSum([K.Unary(weight=0.7), K.Pairwise(channels=2)]), False),  # no parts: the gradient
])
def test_gradient_at_data_falls_back_to_the_gradient(make, product):
    """The zero-anchored terms' own operators give the gradient at the data (data-anchored terms
    add nothing there, diagonal or not); without anchors or per-term operators, the gradient."""
    E = make().double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=F64)
    ref = torch.func.grad(lambda y: E.energy(y, x).sum())(x)
    with mock.patch.object(type(E), "grad", wraps=E.grad) as grad:
        got = gradient_at_data(E, HessianOperator.of_energy(E, x, None), x, None)
    assert grad.called != product
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_a_sum_of_prepared_operators_keeps_its_parts():
    """``HessianStructure.sum`` applies the sum (through the solvers' operator), and keeps the
    structures it was made of."""
    E = (K.Unary(weight=[0.5, 2.0]) + K.Pairwise(channels=2) + AnchoredBoxSmooth(0.5)).double()
    x = torch.randn(2, 2, 5, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    ops = [t._hessian_structure(x, None) for t in E.terms]
    total = HessianOperator(K.HessianStructure.sum(ops))
    assert total.parts == tuple(ops) and ops[0].parts is None
    torch.testing.assert_close(total(v, 0.3, 0.2), 0.3 * E._hessian_vector_product(x, x, None, v) + 0.2 * v,
                               rtol=1e-12, atol=1e-12)
    one = HessianOperator(K.HessianStructure.sum(ops[1:2]))  # a single rest: the same product
    torch.testing.assert_close(one(v), E.terms[1]._hessian_vector_product(x, x, None, v), rtol=1e-12, atol=1e-12)


def test_the_quadratic_part_of_a_sum_is_made_once_and_follows_its_terms():
    """The sum of the quadratic terms is kept for the energy: the same module while they are its
    terms (their parameter changes show through it), a copy's own after ``deepcopy``, a new one
    when a term is replaced; never a submodule or state of the energy."""
    E = K.Unary(weight=0.7) + K.Pairwise(channels=2) + K.FieldOfExperts(channels=2)
    x = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(6))
    keys, modules = list(E.state_dict()), len(list(E.modules()))
    cheb.check_chebyshev(Problem(E, torch.zeros(1, 2, 6, 6)))  # validation keeps nothing for the solve
    assert _KEPT_PARTS.get(E) is None and quadratic_part(E, keep=False) is not quadratic_part(E, keep=False)
    part = quadratic_part(E)
    assert quadratic_part(E) is part and list(part.terms) == list(E.terms)[:2]
    assert list(E.state_dict()) == keys and len(list(E.modules())) == modules
    before = part(x + 1, x)
    with torch.no_grad():
        E.terms[0].fixed_weight.mul_(2.0)
    torch.testing.assert_close(part(x + 1, x) - before, E.terms[0](x + 1, x) / 2)
    twin = copy.deepcopy(E)
    twin_part = quadratic_part(twin)
    assert twin_part is not part and all(a is b for a, b in zip(twin_part.terms, list(twin.terms)[:2]))
    E.terms[1] = K.Pairwise(channels=2, kernel=K.LocalKernel(radius=1))
    assert quadratic_part(E) is not part and quadratic_part(E).terms[1] is E.terms[1]


@given(params=unary_pairwise_params, extra=st.integers(0, 4), degree=st.integers(1, 5))
def test_quadratic_start_error_shrinks_by_the_accuracy_in_the_energy_norm(params, extra, degree):
    """``y0 = x - P grad E_q(x)``: its error is ``(I - P H)(x - y*)``, so in the ``H``-norm it is at
    most ``accuracy`` times the error of ``x``."""
    E, x, c = unary_pairwise_case(params, extra, extra)
    problem = Problem(E, x, c)
    P = cheb.chebyshev_preconditioner(problem, x, degree)
    y0 = quadratic_start(problem, P)
    y_star = exact_quadratic_minimiser(E, x, c).detach()
    for b in range(x.shape[0]):
        Hm = explicit_hessian(E, x[b:b + 1], x[b:b + 1], None if c is None else c[b:b + 1]).detach()
        norm = lambda e: float(e.reshape(-1) @ Hm @ e.reshape(-1)) ** 0.5  # noqa: E731
        assert norm(y0[b] - y_star[b]) <= P.accuracy * norm(x[b] - y_star[b]) * (1 + 1e-8) + 1e-12
