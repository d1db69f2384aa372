"""The solver base class with its driver loop, and the per-site block solve.

A solver is one *step* (:meth:`Solver.step`): given ``y^{(t)}``, its energy and gradient,
return ``y^{(t+1)}``. :meth:`Solver.solve` owns the loop: it records the history, stops
each sample on its own (relative energy change or relative gradient norm), detects
divergence (energy rising, non-finite values, a run-away iterate), and times the run. Its
options are :class:`~energycrf.solvers.options.SolveOptions`; what it records and how it
judges each sample is in :mod:`energycrf.solvers.driver`.

The update that coordinate descent, mean-field and the preconditioners share is the
site-wise majoriser step of ``energy-model.md``,

.. math::  y_i \\leftarrow y_i - A_i^{-1} g_i,

with ``g = grad E(y)`` and ``A_i`` the ``C x C`` curvature block of site ``i``
(``E.curvature``); :func:`block_solve` does it for all sites at once.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .driver import History, Ledger, report_outcome, start_scalars
from .linalg import block_solve, sample_dot, sample_norm
from .host import _bcast, _device_mask, _host, _max_abs
from .options import SolveOptions, with_option_signature
from .problem import Problem
from .result import SolveResult

__all__ = ["Problem", "StepOutput", "Solver", "block_solve", "sample_norm", "sample_dot", "HALF_DTYPES"]

#: Solved on float32 copies and returned in their own dtype (:meth:`Solver.solve`).
HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class StepOutput:
    """What one step returns.

    ``grad`` may be left ``None`` (the driver computes it). ``accepted[b]`` is False when
    the step was rejected for sample ``b`` (it did not move): energy-change convergence
    is not judged on such a step. ``stalled`` / ``diverged`` let a method give up on a
    sample with a reason; ``done`` marks samples the step solved exactly. The masks are
    ``[B]`` bool tensors or host (numpy) arrays, whichever the step has. ``host``: the
    driver's per-sample scalars of the returned point when the step has them on the host
    already, float64 ``[3, B]``: energy, gradient norm and ``max |y|`` (then the driver
    transfers nothing).
    """

    y: Tensor
    energy: Tensor
    grad: Tensor | None = None
    accepted: Tensor | np.ndarray | None = None
    stalled: Tensor | np.ndarray | None = None
    stall_reason: str = "no step lowered the energy"
    diverged: Tensor | np.ndarray | None = None
    diverge_reason: str = "the energy is unbounded below"
    done: Tensor | np.ndarray | None = None
    host: np.ndarray | None = None



# ----------------------------------------------------------------------------------------
# the driver


class Solver:
    """Base class: subclasses set :attr:`name` and implement :meth:`init_state` and :meth:`step`.

    Construct with the method's own options (keyword arguments, typed), then call
    :meth:`solve`. ``ec.solve(E, x, c, method=name, **options)`` does both. A method whose
    loop is not the driver's (scipy's) overrides :meth:`_minimise` and keeps the rest.
    """

    name: ClassVar[str] = "solver"
    #: True when every step can only lower the energy (coordinate descent, line searches).
    monotone: ClassVar[bool] = False
    #: True when the method minimises quadratic energies only and refuses others in :meth:`check`;
    #: ``None``: not declared (``energycrf.testing.solver_traits`` then finds out by a probe).
    quadratic_only: ClassVar[bool | None] = None

    def check(self, problem: Problem, y0: Tensor) -> None:
        """Raise ``ValueError`` when the method cannot handle this energy (before any work)."""

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> Any:
        """The method's state across steps (its own dataclass), made at the start point."""
        return None

    def start_operator(self, problem: Problem) -> Any:
        """The operator of ``y0="quadratic"`` (:func:`~energycrf.solvers.start.quadratic_start`):
        ``None``, the FFT operator, unless the method has one of its own."""
        return None

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: Any) -> StepOutput:
        raise NotImplementedError

    # -- the solve, step by step ----------------------------------------------------------
    @with_option_signature
    def solve(self, E: Any, x: Tensor, c: Tensor | None = None, **options: Any) -> SolveResult:
        """Minimise ``E(., x, c)`` from ``y0`` (default ``x``).

        The keyword options are the driver's, the fields of
        :class:`~energycrf.solvers.options.SolveOptions` (``y0``, ``max_iters``, ``tol``, ``gtol``,
        ``on_diverge``, ``rise_tol``, ``blowup``, ``well_posed``, ``progress``, ``callback``), with
        its defaults; a bad value is a ``ValueError`` naming it, an unknown name a ``TypeError``.
        Steps: :meth:`_set_up` (validate, bind the problem), :meth:`_minimise` (the start point,
        the loop, the result), then divergence and stalls reported by ``on_diverge``.
        """
        opts = SolveOptions.from_keywords(options)
        if isinstance(x, Tensor) and x.dtype in HALF_DTYPES:
            return self._solve_in_float32(E, x, c, opts)
        problem, y0, start = self._set_up(E, x, c, opts)
        res = self._minimise(problem, y0, start, opts)
        report_outcome(res, opts.on_diverge)
        return res

    def _solve_in_float32(self, E: Any, x: Tensor, c: Tensor | None, opts: SolveOptions) -> SolveResult:
        """Half precision (float16, bfloat16): the solve runs on float32 copies of the energy, ``x``,
        ``c`` and ``y0``, where the block solves, line searches and tolerances are defined; ``res.y``
        comes back in ``x``'s dtype, the energies and the callback's iterates stay float32."""
        if not isinstance(E, torch.nn.Module):
            raise TypeError(f"E: a {x.dtype} solve runs on a float32 copy of the energy, which needs an "
                            f"nn.Module (an ec.Energy), got {type(E).__name__}")
        up = (lambda t: t.float() if isinstance(t, Tensor) and t.is_floating_point() else t)
        y0 = opts.y0
        if isinstance(y0, Tensor) and y0.dtype != x.dtype:
            raise ValueError(f"y0: expected dtype {x.dtype} on {x.device} like x, got {y0.dtype} on {y0.device}")
        options = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
        res = self.solve(copy.deepcopy(E).float(), up(x), up(c), **{**options, "y0": up(y0)})
        res.y = res.y.to(x.dtype)
        return res

    def _set_up(self, E: Any, x: Tensor, c: Tensor | None, opts: SolveOptions) -> tuple[Problem, Tensor, str | None]:
        """``(problem, y0, start)``: ``E``, ``x`` and ``c`` checked and bound, ``y0`` checked against
        ``x`` (a copy of ``x`` for a named start, ``start`` its name), the energy's well-posedness
        checked when asked, and the method's own :meth:`check` passed: all before any work."""
        problem = Problem(E, x, c)
        y0, start = opts.start(x)
        if opts.well_posed != "ignore" and hasattr(E, "check_well_posed"):
            E.check_well_posed(c, on_fail=opts.well_posed)
        self.check(problem, y0)
        return problem, y0, start

    def _start_point(self, problem: Problem, y0: Tensor, start: str | None) -> Tensor:
        """The first iterate, a tensor of the solver's own: a copy of ``y0``, or the named start
        computed (``"quadratic"``: the quadratic part's minimiser by :meth:`start_operator`)."""
        if start == "quadratic":
            from .start import quadratic_start

            return quadratic_start(problem, self.start_operator(problem))
        return y0.detach().clone()

    def _minimise(self, problem: Problem, y0: Tensor, start: str | None, opts: SolveOptions) -> SolveResult:
        """The timed run: the start point (timed: it is part of the method), its energy and
        gradient, the loop (:meth:`_iterate`), and the :class:`SolveResult`."""
        x = problem.x
        tol, gtol = opts.tolerances(x.dtype)
        t_start = time.perf_counter()
        y = self._start_point(problem, y0, start)
        if start is not None:
            y0 = y
        e, g = problem.energy_and_grad(y)
        e_np, gn_np = start_scalars(e, g)  # the per-sample bookkeeping runs on the host: one transfer
        # a computed start is part of the run: its row is stamped when it is known
        history = History()
        history.append(e_np, gn_np, time.perf_counter() - t_start if start is not None else 0.0)
        ledger = Ledger(history, x, y0, tol=tol, gtol=gtol, rise_tol=opts.rise_tol, blowup=opts.blowup,
                        max_iters=opts.max_iters, eps=torch.finfo(x.dtype).eps, tiny=torch.finfo(e.dtype).tiny)
        y, e, t_callback = self._iterate(problem, y, e, g, ledger, opts, t_start)
        wall = time.perf_counter() - t_start - t_callback
        return history.result(y, e.dtype, status=ledger.status, reason=ledger.reason, iterations=ledger.iterations,
                              method=self.name, wall_time=wall, evaluations=problem.counts)

    def _iterate(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, ledger: Ledger, opts: SolveOptions,
                 t_start: float) -> tuple[Tensor, Tensor, float]:
        """The loop: up to ``max_iters`` steps, each judged per sample by ``ledger`` (one transfer
        of the new point's energy, gradient norm and ``max |y|``, none when the step hands them
        over), the samples that diverged keeping their point; then the callback and the bar.
        Returns the last iterate, its energies and the seconds spent in the callback."""
        bar = None
        if opts.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=opts.max_iters, desc=self.name, leave=False)
        state = self.init_state(problem, y, e, g)
        it, t_callback = 0, 0.0
        for it in range(1, opts.max_iters + 1):
            out = self.step(problem, y, e, g, state)
            g_new = out.grad if out.grad is not None else problem.grad(out.y)
            at_new = _host(out.energy, sample_norm(g_new), _max_abs(out.y)) if out.host is None else out.host
            ok = ledger.judge(it, out, at_new)
            if ok.all():
                y, g, e = out.y, g_new, out.energy
            else:
                ok_t = _device_mask(ok, y)
                m4 = _bcast(ok_t, y)
                y, g, e = torch.where(m4, out.y, y), torch.where(m4, g_new, g), torch.where(ok_t, out.energy, e)
            ledger.advance(ok, at_new, time.perf_counter() - t_start - t_callback)
            if opts.callback is not None:
                t_cb = time.perf_counter()
                opts.callback(it, y, e)
                t_callback += time.perf_counter() - t_cb
            if bar is not None:
                bar.update(1)
                bar.set_postfix(E=f"{float(ledger.e.sum()):.6g}", active=int(ledger.active.sum()))
            if not ledger.active.any():
                break
        if bar is not None:
            bar.close()
        ledger.finish(it)
        return y, e, t_callback
