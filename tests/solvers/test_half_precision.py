"""Half-precision inputs (float16, bfloat16) are solved on float32 copies: every registered
method gives the float32 solve's answer rounded to the input's dtype, with the energy and the
caller's tensors untouched; a duck-typed energy that cannot be copied is refused by name."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import energycrf as ec
from energycrf.solvers import method_names
from energycrf.testing.solver_problems import convex_problem, quadratic_problem

HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("method", method_names())
def test_every_method_solves_half_precision_in_float32(method, dtype):
    E, x64 = (quadratic_problem() if ec.testing.solver_traits(method).quadratic_only else convex_problem())
    E = E.to(dtype)
    x = x64.to(dtype)
    before = {k: v.clone() for k, v in E.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ec.solvers.SolverWarning)
        res = ec.solve(E, x, method=method, max_iters=40)
        ref = ec.solve(copy.deepcopy(E).float(), x.float(), method=method, max_iters=40)
    assert res.y.dtype == dtype and res.energies.dtype == torch.float32
    assert torch.equal(res.y, ref.y.to(dtype)) and res.status == ref.status
    assert E.state_dict().keys() == before.keys()
    assert all(v.dtype == before[k].dtype and torch.equal(v, before[k]) for k, v in E.state_dict().items())


def test_a_half_y0_must_match_x_and_a_plain_callable_is_refused():
    E, x64 = quadratic_problem()
    x = x64.half()
    with pytest.raises(ValueError, match="y0: expected dtype torch.float16"):
        ec.solve(copy.deepcopy(E).half(), x, y0=x.float())

    class Duck:
        def __call__(self, y, x, c=None):
            return ((y - x) ** 2).flatten(1).sum(1)

        def grad(self, y, x, c=None):
            return 2 * (y - x)

    with pytest.raises(TypeError, match="E: a torch.float16 solve runs on a float32 copy"):
        ec.solve(Duck(), x)
