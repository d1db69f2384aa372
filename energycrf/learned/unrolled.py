r"""Any energy + solver as a trainable layer: learn an energy's parameters through its minimiser.

:class:`Unrolled` maps ``(x, c)`` to :math:`y^\star(\theta) \approx \arg\min_y E_\theta(y, x, c)`
by ``num_iterations`` steps of a solver, and gives :math:`\partial L / \partial \theta` in
one of two ways.

``differentiation="backprop"``: autograd through every step (the steps are the solvers'
own ``Solver.step``, run on a problem that keeps the graph). Exact for the truncated
iteration; memory grows linearly with the number of steps.

``differentiation="implicit"``: run the solver without a graph to a fixed point
:math:`y^\star` with :math:`g(y^\star, \theta) = \nabla_y E_\theta(y^\star) = 0`. The implicit
function theorem gives

.. math::

    \frac{\partial y^\star}{\partial \theta} = -H^{-1} \frac{\partial g}{\partial \theta},
    \qquad H = \nabla^2_{yy} E(y^\star),

so for a loss :math:`L(y^\star)`, with :math:`\bar y = \partial L / \partial y^\star`,

.. math::

    H v = \bar y \quad \text{(conjugate gradients, Hessian-vector products } Hv = \partial (g^\top v)/\partial y),
    \qquad \frac{\partial L}{\partial \theta} = -v^\top \frac{\partial g}{\partial \theta},

and the same for ``x`` and ``c``. Only the graph of one gradient evaluation at
:math:`y^\star` is kept: memory does not depend on the number of iterations. It needs a
strict local minimum (:math:`H` positive definite; CG reports otherwise) reached to good
accuracy (a warning says when the solver stopped early).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..energies._validation import check_condition, check_latent
from ..energies.base import Energy
from ..solvers.api import get_solver
from ..solvers.base import Problem, Solver, block_solve, sample_dot
from ..solvers.result import SolverWarning

__all__ = ["Unrolled", "Staged", "ImplicitDifferentiationWarning", "conjugate_gradient"]

DIFFERENTIATIONS = ("backprop", "implicit")


class ImplicitDifferentiationWarning(SolverWarning):
    """Implicit gradients were computed at a point that is not an accurate fixed point."""


class _GraphProblem(Problem):
    """A :class:`Problem` that keeps the autograd graph (for backpropagation through steps)."""

    def energy(self, y: Tensor) -> Tensor:
        self.counts["energy"] += 1
        return self.E(y, self.x, self.c)

    def grad(self, y: Tensor) -> Tensor:
        self.counts["grad"] += 1
        return self.E.grad(y, self.x, self.c)

    def curvature(self, y: Tensor) -> Tensor:
        if self._curv_cache is not None:
            return self._curv_cache
        self.counts["curvature"] += 1
        A = self.E.curvature(y, self.x, self.c)
        if self.is_quadratic:
            self._curv_cache = A
        return A


def conjugate_gradient(
    hvp: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    tol: float = 1e-10,
    max_iters: int = 500,
    precondition: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, int]:
    r"""Solve :math:`H v = b` per sample for a symmetric positive-definite, block-diagonal-by-sample ``H``.

    Args:
        hvp: ``v -> H v`` for ``[B, ...]`` tensors (samples independent).
        b: right-hand side ``[B, ...]``.
        tol: stop a sample when :math:`\|r\| \le \mathrm{tol}\,\|b\|`.
        max_iters: iteration cap.
        precondition: ``r -> P^{-1} r`` with ``P`` symmetric positive definite (for example
            the per-site curvature blocks, ``block_solve(A, r)``); ``None`` for plain CG.

    Returns:
        ``(v, converged [B] bool, iterations)``.

    Raises:
        RuntimeError: when :math:`p^\top H p \le 0` for some search direction (``H`` is not
            positive definite: the point is not a strict local minimum).
    """
    v = torch.zeros_like(b)
    r = b.clone()
    z = r if precondition is None else precondition(r)
    p = z.clone()
    rz = sample_dot(r, z)
    target = tol * sample_dot(b, b).sqrt()
    tiny = torch.finfo(b.dtype).tiny
    active = sample_dot(r, r).sqrt() > target
    shape = (-1,) + (1,) * (b.dim() - 1)
    it = 0
    while it < max_iters and bool(active.any()):
        it += 1
        Hp = hvp(p)
        pHp = sample_dot(p, Hp)
        if bool((active & ~(pHp > 0)).any()):
            raise RuntimeError(
                "implicit differentiation: the Hessian of the energy at the fixed point is not positive definite "
                "(p^T H p <= 0 for a conjugate-gradient direction); the solver did not reach a strict local "
                "minimum. Use differentiation='backprop', or an energy with a positive convexity margin."
            )
        alpha = torch.where(active, rz / pHp.clamp_min(tiny), torch.zeros_like(rz))
        v = v + alpha.view(shape) * p
        r = r - alpha.view(shape) * Hp
        active = active & (sample_dot(r, r).sqrt() > target)
        z = r if precondition is None else precondition(r)
        rz_new = sample_dot(r, z)
        beta = torch.where(active, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        p = z + beta.view(shape) * p
        rz = rz_new
    return v, ~active, it


class _ImplicitAdjoint(torch.autograd.Function):
    r"""Identity-zero node: forward returns ``0`` (like ``g``); backward maps :math:`\bar y \mapsto -H^{-1}\bar y`.

    Used as ``y = y* + _ImplicitAdjoint(g(y*, theta))``: the value is ``y*`` and autograd
    carries :math:`-H^{-1}\bar y` through :math:`\partial g / \partial (\theta, x, c)`.
    """

    @staticmethod
    def forward(ctx, g: Tensor, y_leaf: Tensor, options: dict) -> Tensor:
        ctx.save_for_backward(g, y_leaf)
        ctx.options = options
        return torch.zeros_like(g)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        g, y_leaf = ctx.saved_tensors
        opts = ctx.options

        def hvp(v: Tensor) -> Tensor:
            with torch.enable_grad():
                (hv,) = torch.autograd.grad(g, y_leaf, v, retain_graph=True)
            return hv

        precondition = None
        if opts["blocks"] is not None:
            blocks = opts["blocks"]

            def precondition(r: Tensor) -> Tensor:
                return block_solve(blocks, r)

        v, converged, iterations = conjugate_gradient(
            hvp, grad_out, tol=opts["cg_tol"], max_iters=opts["cg_max_iters"], precondition=precondition
        )
        opts["stats"]["cg_iterations"] = iterations
        if not bool(converged.all()):
            warnings.warn(
                f"implicit differentiation: conjugate gradients did not reach cg_tol={opts['cg_tol']:g} in "
                f"{opts['cg_max_iters']} iterations for sample(s) {torch.nonzero(~converged).flatten().tolist()}",
                ImplicitDifferentiationWarning,
                stacklevel=2,
            )
        return -v, None, None


def _check_inputs(x: Tensor, c: Tensor | None, y0: Tensor | None) -> tuple[Tensor | None, Tensor]:
    """Validated ``(c, y0)`` for a layer's ``forward``; ``y0`` defaults to ``x``."""
    check_latent("x", x)
    c = check_condition(c, x.shape[0], x.dtype, x.device)
    if y0 is None:
        return c, x
    check_latent("y0", y0)
    if y0.shape != x.shape:
        raise ValueError(f"y0: expected a tensor shaped like x {tuple(x.shape)}, got {tuple(y0.shape)}")
    return c, y0


class Unrolled(nn.Module):
    r"""A trainable layer :math:`x \mapsto y^\star_\theta(x, c)`: ``num_iterations`` solver steps on ``energy``.

    Args:
        energy: the energy whose parameters are learned (registered as ``self.energy``).
        method: a solver registry name (``"mean_field"``, ``"coordinate_descent"``,
            ``"gradient_descent"``, ...), a :class:`Solver` instance, or a callable
            ``step(energy, y, x, c) -> y`` (one iteration).
        num_iterations: the number of steps (backprop), or the iteration cap (implicit).
        differentiation: ``"backprop"`` (through the steps) or ``"implicit"`` (at the fixed point).
        gtol: implicit mode iterates (at most ``num_iterations`` times) until
            :math:`\|\nabla E\| \le \mathrm{gtol}\,\|\nabla E(y_0)\|` per sample (default
            ``1e-5`` in float32, ``1e-8`` in float64); a warning says when it did not get there.
        cg_tol, cg_max_iters: conjugate gradients for the implicit backward pass.
        precondition: precondition those conjugate gradients with the energy's per-site
            curvature blocks :math:`A_i` at :math:`y^\star` (``E.curvature``; exact Hessian
            blocks for quadratic terms, majoriser blocks otherwise): fewer Hessian-vector
            products when the blocks carry most of the curvature.
        **solver_options: passed to the solver's constructor when ``method`` is a name.

    Example:
        >>> import torch, energycrf as ec
        >>> from energycrf.learned import Unrolled
        >>> E = ec.energies.Unary(learnable=True) + ec.energies.Pairwise(channels=1, compatibility="learnable")
        >>> layer = Unrolled(E, "mean_field", num_iterations=50, differentiation="implicit")
        >>> x = torch.randn(2, 1, 8, 8)
        >>> layer(x).square().sum().backward()
        >>> E[0].log_weight.grad is not None
        True
    """

    def __init__(
        self,
        energy: Energy,
        method: str | Solver | Callable = "mean_field",
        num_iterations: int = 10,
        *,
        differentiation: str = "backprop",
        gtol: float | None = None,
        cg_tol: float = 1e-10,
        cg_max_iters: int = 500,
        precondition: bool = True,
        **solver_options: Any,
    ):
        super().__init__()
        if not isinstance(energy, Energy):
            raise TypeError(f"energy must be an energycrf Energy, got {type(energy).__name__}")
        if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
            raise ValueError(f"num_iterations must be an int >= 1, got {num_iterations!r}")
        if differentiation not in DIFFERENTIATIONS:
            raise ValueError(f"differentiation must be one of {DIFFERENTIATIONS}, got {differentiation!r}")
        if not cg_tol > 0:
            raise ValueError(f"cg_tol must be positive, got {cg_tol!r}")
        if isinstance(cg_max_iters, bool) or not isinstance(cg_max_iters, int) or cg_max_iters < 1:
            raise ValueError(f"cg_max_iters must be an int >= 1, got {cg_max_iters!r}")
        self.energy = energy
        if isinstance(method, (str, Solver)):
            self.solver: Solver | None = get_solver(method, **solver_options)
            self.step_fn: Callable | None = None
        elif callable(method):
            if solver_options:
                raise TypeError(f"solver options {sorted(solver_options)} need a solver name, not a step callable")
            self.solver, self.step_fn = None, method
        else:
            raise TypeError(f"method must be a solver name, a Solver or a step callable, got {type(method).__name__}")
        self.num_iterations, self.differentiation = num_iterations, differentiation
        if gtol is not None and not (isinstance(gtol, (int, float)) and gtol >= 0):
            raise ValueError(f"gtol must be a non-negative number, got {gtol!r}")
        self.gtol = gtol
        self.cg_tol, self.cg_max_iters = float(cg_tol), int(cg_max_iters)
        if not isinstance(precondition, bool):
            raise TypeError(f"precondition must be a bool, got {type(precondition).__name__}")
        self.precondition = precondition
        self.backward_stats: dict = {}  # implicit mode: cg_iterations of the last backward pass
        self.last_result: dict | None = None  # implicit mode: iterations, converged [B], grad_norm_ratio [B]

    # ------------------------------------------------------------------ iterations
    def _iterate(self, x: Tensor, c: Tensor | None, y: Tensor) -> Tensor:
        """``num_iterations`` steps, keeping the graph (backprop mode)."""
        if self.step_fn is not None:
            for _ in range(self.num_iterations):
                y = self.step_fn(self.energy, y, x, c)
            return y
        problem = _GraphProblem(self.energy, x, c)
        self.solver.check(problem, y)
        e, g = problem.energy(y), problem.grad(y)
        state = self.solver.init_state(problem, y, e, g)
        for _ in range(self.num_iterations):
            out = self.solver.step(problem, y, e, g, state)
            y, e = out.y, out.energy
            g = out.grad if out.grad is not None else problem.grad(y)
        return y

    @torch.no_grad()
    def _fixed_point(self, x: Tensor, c: Tensor | None, y0: Tensor) -> Tensor:
        r"""Iterate without a graph until :math:`\|\nabla E(y)\| \le \mathrm{gtol}\,\|\nabla E(y_0)\|`.

        The stopping rule is the gradient norm only: at float round-off the energy stops
        changing well before the gradient (the quantity implicit differentiation needs) is small.
        """
        gtol = self.gtol if self.gtol is not None else (1e-8 if x.dtype == torch.float64 else 1e-5)
        xd, cd = x.detach(), (None if c is None else c.detach())
        y = y0.detach()
        problem = Problem(self.energy, xd, cd)
        g = problem.grad(y)
        g0n = g.flatten(1).norm(dim=1)
        target = gtol * g0n
        state = None
        if self.solver is not None:
            self.solver.check(problem, y)
            e = problem.energy(y)
            state = self.solver.init_state(problem, y, e, g)
        it = 0
        done = g.flatten(1).norm(dim=1) <= target
        while it < self.num_iterations and not bool(done.all()):
            it += 1
            if self.solver is not None:
                out = self.solver.step(problem, y, e, g, state)
                y_new, e = out.y, out.energy
                g_new = out.grad if out.grad is not None else problem.grad(y_new)
            else:
                y_new = self.step_fn(self.energy, y, xd, cd)
                g_new = problem.grad(y_new)
            if not (torch.isfinite(y_new).all() and torch.isfinite(g_new).all()):
                raise RuntimeError(
                    f"implicit differentiation: the solver produced non-finite values at iteration {it} "
                    "(diverged); check E.check_well_posed() or use damping"
                )
            keep = done.view(-1, *([1] * (y.dim() - 1)))
            y, g = torch.where(keep, y, y_new), torch.where(keep, g, g_new)
            done = done | (g.flatten(1).norm(dim=1) <= target)
        ratio = g.flatten(1).norm(dim=1) / g0n.clamp_min(torch.finfo(y.dtype).tiny)
        self.last_result = {"iterations": it, "converged": done, "grad_norm_ratio": ratio}
        if not bool(done.all()):
            warnings.warn(
                f"implicit differentiation: |grad E| did not fall below gtol={gtol:g} times its start in "
                f"{self.num_iterations} iterations for sample(s) {torch.nonzero(~done).flatten().tolist()}; "
                "the gradients assume a fixed point. Raise num_iterations or use differentiation='backprop'.",
                ImplicitDifferentiationWarning,
                stacklevel=3,
            )
        return y

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, c: Tensor | None = None, y0: Tensor | None = None) -> Tensor:
        """The (approximate) minimiser of ``energy(., x, c)``, differentiable in the energy's parameters, ``x`` and ``c``."""
        c, y0 = _check_inputs(x, c, y0)
        if self.differentiation == "backprop":
            return self._iterate(x, c, y0)
        y_star = self._fixed_point(x, c, y0)
        needs_grad = (
            x.requires_grad
            or (c is not None and c.requires_grad)
            or any(p.requires_grad for p in self.energy.parameters())
        )
        if not (torch.is_grad_enabled() and needs_grad):
            return y_star
        y_leaf = y_star.clone().requires_grad_(True)
        g = self.energy.grad(y_leaf, x, c)
        blocks = None
        if self.precondition:
            with torch.no_grad():
                blocks = self.energy.curvature(y_star, x.detach(), None if c is None else c.detach())
        self.backward_stats = {}
        options = {"cg_tol": self.cg_tol, "cg_max_iters": self.cg_max_iters, "blocks": blocks,
                   "stats": self.backward_stats}
        return y_star + _ImplicitAdjoint.apply(g, y_leaf, options)

    def extra_repr(self) -> str:
        method = self.solver.name if self.solver is not None else getattr(self.step_fn, "__name__", "step")
        return f"method={method!r}, num_iterations={self.num_iterations}, differentiation={self.differentiation!r}"


class Staged(nn.Module):
    r"""Stage-wise unrolled gradient descent: one step on each of ``T`` energies of their own.

    .. math::

        y_0 = x, \qquad y_t = y_{t-1} - \eta\, \nabla_y E_t(y_{t-1}, x, c), \quad t = 1, \dots, T,

    the trainable reaction-diffusion scheme of Chen and Pock (TRD): with
    :math:`E_t = w_t \|y - x\|^2 + \sum_m \sum_k \rho_{t,m}((J_{t,m} \odot y)_k)` a step is
    :math:`y_t = y_{t-1} - \sum_m J_{t,m}^- \odot \rho_{t,m}'(J_{t,m} \odot y_{t-1}) - 2 w_t (y_{t-1} - x)`,
    a diffusion by learned filters and influence functions plus a reaction towards the data.
    :class:`Unrolled` iterates one energy towards its minimiser; here every step has its own
    parameters and the output is the last iterate, not a minimiser. The steps use each
    energy's own ``grad`` (its message, filter and score operators).

    Args:
        energies: ``T >= 1`` energies (registered as ``self.energies``).
        step_size: :math:`\eta > 0` (the energies' weights absorb any other scale).

    Example:
        >>> import torch, energycrf as ec
        >>> from energycrf.learned import Staged
        >>> stages = [ec.energies.Unary(learnable=True) + ec.energies.FieldOfExperts(channels=1, num_filters=4,
        ...           kernel_size=3, potential=ec.energies.PiecewiseLinear(num_experts=4)) for _ in range(3)]
        >>> layer = Staged(stages)
        >>> layer(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, energies: Sequence[Energy], step_size: float = 1.0):
        super().__init__()
        energies = list(energies) if not isinstance(energies, Energy) else [energies]
        if not energies:
            raise ValueError("energies: expected at least one energy, got an empty sequence")
        for t, energy in enumerate(energies):
            if not isinstance(energy, Energy):
                raise TypeError(f"energies[{t}]: expected an energycrf Energy, got {type(energy).__name__}")
        if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0:
            raise ValueError(f"step_size: expected a positive number, got {step_size!r}")
        self.energies = nn.ModuleList(energies)
        self.step_size = float(step_size)

    def forward(self, x: Tensor, c: Tensor | None = None, y0: Tensor | None = None,
                return_all: bool = False) -> Tensor | list[Tensor]:
        """The last iterate :math:`y_T` (or ``[y_1, ..., y_T]`` with ``return_all``)."""
        c, y = _check_inputs(x, c, y0)
        iterates = []
        for energy in self.energies:
            y = y - self.step_size * energy.grad(y, x, c)
            iterates.append(y)
        return iterates if return_all else y

    def extra_repr(self) -> str:
        return f"stages={len(self.energies)}, step_size={self.step_size:g}"
