"""The problems of the solver conformance suite: tiny float64 energies with known answers.

- :func:`quadratic_problem`: ``Unary + Pairwise`` (a 3 x 3 Gaussian kernel with circular
  boundary, a random well-conditioned compatibility ``M``), a strictly convex quadratic
  :math:`E(y) = \\tfrac12 y^\\top H y + b^\\top y + \\text{const}` whose minimiser
  :math:`y^\\star = -H^{-1} \\nabla E(0)` :func:`exact_minimiser` finds by a dense solve of
  the Hessian (``torch.func``);
- :func:`convex_problem`: the same plus a Field of Experts with the convex Charbonnier
  expert: strictly convex, not quadratic;
- :func:`unbounded_problem`: ``Unary(w) + ConcaveBowl(a)`` with :math:`a > w`, whose
  Hessian :math:`(2w - 2a) I` is negative definite: unbounded below, not quadratic.

Every problem is periodic, translation invariant and of finite interaction radius, so a
solver that needs any of those (coordinate descent, the FFT solver) accepts it, and is
seeded without touching torch's global generator.
"""

from __future__ import annotations

import torch
from torch import Tensor

import energycrf.energies as K
from energycrf.energies import Energy

from .numerics import full_hessian

__all__ = ["ConcaveBowl", "quadratic_problem", "convex_problem", "unbounded_problem", "exact_minimiser"]

F64 = torch.float64


def _inputs(seed: int, batch: int, channels: int, height: int, width: int, scales=None) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g, dtype=F64)
    if scales is not None:
        x = x * torch.tensor(scales, dtype=F64).view(-1, 1, 1, 1)
    return x


def _quadratic_terms(channels: int, seed: int):
    g = torch.Generator().manual_seed(10_000 + seed)
    compatibility = torch.eye(channels) + 0.3 * torch.randn(channels, channels, generator=g)
    kernel = K.LocalKernel(radius=1, sigma=1.0, strength=1.0, boundary="circular")
    return K.Unary(weight=1.0) + K.Pairwise(channels=channels, kernel=kernel, compatibility=compatibility)


def quadratic_problem(seed: int = 5, batch: int = 2, channels: int = 2, height: int = 5, width: int = 6,
                      scales=None) -> tuple:
    """``(E, x)``: the strictly convex quadratic ``Unary + Pairwise`` and ``x`` ``[B, C, H, W]``
    (float64; ``scales``: one factor per sample of ``x``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        E = _quadratic_terms(channels, seed).to(F64)
    return E, _inputs(seed, batch, channels, height, width, scales)


def convex_problem(seed: int = 3, batch: int = 2, channels: int = 2, height: int = 5, width: int = 5,
                   scales=None) -> tuple:
    """``(E, x)``: :func:`quadratic_problem`'s energy plus a Field of Experts with the convex
    Charbonnier expert (circular boundary): strictly convex, not quadratic."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        foe = K.FieldOfExperts(channels=channels, num_filters=3, kernel_size=3,
                               potential=K.potentials.Charbonnier(eps=1.0), init_scale=0.5, boundary="circular")
        E = (_quadratic_terms(channels, seed) + foe).to(F64)
    return E, _inputs(seed, batch, channels, height, width, scales)


class ConcaveBowl(Energy):
    """:math:`-a \\lVert y \\rVert^2`, a user term written with ``energy`` only (its gradient and
    curvature come from the fallbacks); it counts its evaluations in :attr:`evaluations`, so a
    check can tell whether a solver did any work before refusing the energy."""

    interaction_radius = 0
    translation_invariant = True

    def __init__(self, a: float = 1.0):
        super().__init__()
        self.a = float(a)
        self.evaluations = 0

    def energy(self, y, x, c=None):
        self.evaluations += 1
        return -self.a * (y**2).sum((1, 2, 3))


def unbounded_problem(seed: int = 1, batch: int = 2, channels: int = 1, height: int = 4, width: int = 5,
                      weight: float = 0.1, a: float = 1.0) -> tuple:
    """``(E, x, bowl)``: ``Unary(weight) + ConcaveBowl(a)``, unbounded below when ``a > weight``;
    ``bowl.evaluations`` counts the energy's evaluations."""
    bowl = ConcaveBowl(a)
    E = (K.Unary(weight=weight) + bowl).to(F64)
    return E, _inputs(seed, batch, channels, height, width), bowl


def exact_minimiser(E, x: Tensor, c: Tensor | None = None) -> Tensor:
    """:math:`y^\\star = -H^{-1} \\nabla E(0)` for each sample of a quadratic energy: the dense
    Hessian (:func:`~energycrf.testing.full_hessian`) and the gradient at zero by ``torch.func``."""
    out = []
    for b in range(x.shape[0]):
        xb, cb = x[b : b + 1], None if c is None else c[b : b + 1]
        zero = torch.zeros_like(xb)
        n = xb.numel()
        H = full_hessian(E, zero, xb, cb).reshape(n, n)
        g0 = torch.func.grad(lambda v: E(v, xb, cb).sum())(zero).reshape(n)
        out.append(torch.linalg.solve(H, -g0).view_as(xb))
    return torch.cat(out)
