"""Exact coordinate descent: the site-wise majoriser step on colour classes.

For a set ``S`` of sites no two of which share a term, the curvature blocks bound the
energy (``energy-model.md``, "One mechanism for the solvers"):

.. math::

    E(y + \\delta_S) \\le E(y) + g^\\top \\delta_S + \\tfrac12 \\sum_{i \\in S} \\delta_i^\\top A_i \\delta_i ,

so the class update :math:`y_i \\leftarrow y_i - A_i^{-1} g_i` for all :math:`i \\in S`
minimises the bound. It is the exact minimiser over ``y_S`` when every term is quadratic
(block Gauss-Seidel, made parallel), and with the paper's concave FoE term (``A_i = 0``
for it) it is the paper's eq. (9) applied to the sites of ``S``.

Colouring: :func:`energycrf.energies.colouring.colour_classes` (stride ``t = r + 1``
lattice, ``t^2`` classes, wrap-aware for circular boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..energies.colouring import axis_colouring, colour_classes
from .base import Problem, Solver, StepOutput, block_solve

__all__ = ["CoordinateDescent", "CoordinateDescentState", "axis_colouring", "colour_classes"]

_ALTERNATIVES = (
    "method='mean_field' (all sites at once), 'lbfgs' or 'gradient_descent'; for purely quadratic "
    "energies 'conjugate_gradient' or 'fft' (exact); or order='sequential' on small problems"
)


@dataclass
class CoordinateDescentState:
    """Coordinate descent's set-up, made once per solve.

    Attributes:
        masks: the sets :math:`S` updated in turn, ``[H, W]`` bool each: the colour classes, or
            one site each in raster order (``order="sequential"``).
        guard: halve a sample's class step until its energy does not rise (off for a purely
            quadratic energy under ``safeguard="auto"``, where the blocks are exact).
    """

    masks: list[Tensor]
    guard: bool


class CoordinateDescent(Solver):
    """Exact (block) coordinate descent on colour classes, or site by site.

    One iteration is one sweep over all classes (or all sites). Every class update is
    followed, for energies that are not purely quadratic, by a per-sample safeguard: if
    the energy rose (a curvature block that is not a majoriser, e.g. a user term's exact
    Hessian block), the sample's step is halved until it does not.

    Args:
        order: ``"colour"`` (parallel classes, the default) or ``"sequential"`` (one
            site at a time in raster order; the slow reference for small problems).
        radius: override ``E.interaction_radius``.
        safeguard: ``"auto"`` (on unless ``E.is_quadratic``), ``True`` or ``False``.
        max_backtracks: halvings before a sample's class step is dropped.
    """

    name = "coordinate_descent"
    monotone = True

    def __init__(
        self,
        order: str = "colour",
        radius: int | None = None,
        safeguard: bool | str = "auto",
        max_backtracks: int = 30,
    ):
        if order == "color":
            order = "colour"
        if order not in ("colour", "sequential"):
            raise ValueError(f"order: expected 'colour' or 'sequential', got {order!r}")
        if radius is not None and (isinstance(radius, bool) or not isinstance(radius, int) or radius < 0):
            raise ValueError(f"radius: expected None or a non-negative int, got {radius!r}")
        if safeguard not in ("auto", True, False):
            raise ValueError(f"safeguard: expected 'auto', True or False, got {safeguard!r}")
        self.order, self.radius, self.safeguard = order, radius, safeguard
        self.max_backtracks = int(max_backtracks)

    def _radius(self, problem: Problem, y0: Tensor) -> int | None:
        """The option, else the energy's declared radius, else its estimate (user terms)."""
        if self.radius is not None:
            return self.radius
        E = problem.E
        if hasattr(E, "resolve_interaction_radius"):
            with torch.no_grad():
                return E.resolve_interaction_radius(y0, problem.x, problem.c)
        return getattr(E, "interaction_radius", None)

    def check(self, problem: Problem, y0: Tensor) -> None:
        if self.order == "sequential":
            return
        r = self._radius(problem, y0)
        if r is None:
            raise ValueError(
                f"coordinate_descent: {type(problem.E).__name__} couples sites at any distance "
                "(interaction_radius is None, e.g. a long-range FFT kernel), so no colouring "
                f"splits it into non-interacting classes. Use {_ALTERNATIVES}."
            )
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ValueError(f"{type(problem.E).__name__}.interaction_radius: expected a non-negative int or None, "
                             f"got {r!r}")
        problem.radius = r

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> CoordinateDescentState:
        _, _, H, W = y.shape
        if self.order == "sequential":
            masks = []
            for k in range(H * W):
                m = torch.zeros(H * W, dtype=torch.bool, device=y.device)
                m[k] = True
                masks.append(m.view(H, W))
        else:
            periodic = bool(getattr(problem.E, "periodic", False))
            masks = colour_classes(H, W, problem.radius, periodic, device=y.device)
        guard = (not problem.is_quadratic) if self.safeguard == "auto" else bool(self.safeguard)
        return CoordinateDescentState(masks=masks, guard=guard)

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: CoordinateDescentState) -> StepOutput:
        guard = state.guard
        eps = torch.finfo(y.dtype).eps
        for k, mask in enumerate(state.masks):
            if k > 0:
                g = problem.grad(y)
            A = problem.curvature(y)
            # solve only where needed: gather the class's blocks, scatter the step back
            sel = mask.flatten()
            Ak = A.flatten(1, 2)[:, sel]  # [B, n_S, C, C]
            gk = g.flatten(2)[:, :, sel]  # [B, C, n_S]
            dk = block_solve(Ak.unsqueeze(1), gk.unsqueeze(2)).squeeze(2)  # [B, C, n_S]
            delta = torch.zeros_like(y).flatten(2)
            delta[:, :, sel] = -dk
            delta = delta.view_as(y)
            if not guard:
                y = y + delta
                continue
            step = torch.ones(y.shape[0], dtype=y.dtype, device=y.device)
            y_try = y + delta
            e_try = problem.energy(y_try)
            for _ in range(self.max_backtracks):
                bad = ~(e_try <= e + 4 * eps * e.abs())  # NaN counts as bad
                if not bool(bad.any()):
                    break
                step = torch.where(bad, 0.5 * step, step)
                y_try = y + step.view(-1, 1, 1, 1) * delta
                e_try = torch.where(bad, problem.energy(y_try), e_try)
            bad = ~(e_try <= e + 4 * eps * e.abs())
            keep = bad.view(-1, 1, 1, 1)
            y = torch.where(keep, y, y_try)
            e = torch.where(bad, e, e_try)
        if not guard:
            e = problem.energy(y)
        return StepOutput(y=y, energy=e)
