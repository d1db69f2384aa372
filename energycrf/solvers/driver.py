r"""The driver's pieces that every solve shares: the history, the per-sample rules, the report.

:meth:`Solver.solve <energycrf.solvers.base.Solver.solve>` runs the loop; what it records
and how it judges each sample live here, so that a method with a loop of its own
(:class:`~energycrf.solvers.lbfgs.ScipyLBFGS`) records and reports the same way:

- :class:`History`: the rows of a run (per-sample energy and gradient norm, seconds since
  the start) and their assembly into a :class:`~energycrf.solvers.result.SolveResult`;
- :class:`Ledger`: each sample's standing and the rules that stop it, judged on the host
  in float64 from one transfer per iteration: converged (``|E_t - E_{t-1}| / max(|E_t|,
  |E_{t-1}|) <= tol`` after an accepted step, or :math:`\|\nabla E(y_t)\| \le
  \mathrm{gtol}\,\|\nabla E(y_0)\|`), diverged (a non-finite value, a rise above the running
  minimum by more than ``rise_tol`` times the scale, a run-away iterate), stalled (the
  method says so);
- :func:`report_outcome`: the warning or error for diverged and stalled samples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .host import _host, _host_mask, _max_abs
from .result import DivergenceError, DivergenceWarning, SolveResult, SolverWarning

__all__ = ["History", "Ledger", "report_outcome", "start_scalars"]


@dataclass
class History:
    """The rows of one run: the start, then one per iteration.

    Attributes:
        energies: per row, ``E(y_t)`` per sample (host float64 ``[B]``).
        grad_norms: per row, ``||grad E(y_t)||`` per sample.
        times: per row, seconds since the start (the callback's time left out).
    """

    energies: list[np.ndarray] = field(default_factory=list)
    grad_norms: list[np.ndarray] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def append(self, energy: np.ndarray, grad_norm: np.ndarray, seconds: float) -> None:
        self.energies.append(energy)
        self.grad_norms.append(grad_norm)
        self.times.append(seconds)

    def result(self, y: Tensor, dtype: torch.dtype, *, status: list[str], reason: list[str],
               iterations: np.ndarray, method: str, wall_time: float, evaluations: dict[str, int]) -> SolveResult:
        """The :class:`SolveResult` of these rows: ``energies`` and ``grad_norms`` ``[T + 1, B]`` of
        ``dtype`` on ``y``'s device, and each sample's outcome."""
        def as_rows(rows: list[np.ndarray]) -> Tensor:
            return torch.from_numpy(np.stack(rows)).to(dtype=dtype, device=y.device)

        return SolveResult(
            y=y,
            energies=as_rows(self.energies),
            grad_norms=as_rows(self.grad_norms),
            times=torch.tensor(self.times, dtype=torch.float64),
            iterations=torch.from_numpy(np.asarray(iterations, dtype=np.int64)),
            converged=torch.tensor([s == "converged" for s in status], dtype=torch.bool),
            status=status,
            reason=reason,
            method=method,
            wall_time=wall_time,
            evaluations=dict(evaluations),
        )


def start_scalars(e: Tensor, g: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``E(y_0)`` and ``||grad E(y_0)||`` on the host (one transfer), or a ``ValueError`` when either
    is not finite (a gradient norm that overflows while every entry is finite is kept)."""
    gn = torch.linalg.vector_norm(g, dim=tuple(range(1, g.dim())))
    e_np, gn_np = _host(e, gn)
    if not np.isfinite(e_np).all() or (not np.isfinite(gn_np).all() and not bool(torch.isfinite(_max_abs(g)).all())):
        bad = np.flatnonzero(~np.isfinite(e_np) | ~np.isfinite(gn_np)).tolist()
        raise ValueError(
            f"the energy or its gradient is not finite at the start point (x, or y0 when given) of sample(s) "
            f"{bad}: non-finite inputs, or values that overflow {e.dtype} (evaluate in float64 or rescale)")
    return e_np, gn_np


class Ledger:
    """Each sample's standing in one driver run, on the host in float64.

    Holds the current energy ``E_t`` and gradient norm per sample, the running minimum
    ``min_s E_s``, which samples are still active, and each sample's status, reason and
    stopping iteration; :meth:`judge` applies the per-sample rules to a step and
    :meth:`advance` keeps the accepted values and records the row.

    Args:
        history: the rows, its first (the start) already appended.
        x, y0: the data and the start, for the blow-up limit ``blowup (1 + max|x| + max|y0|)``
            (computed once some ``max |y|`` passes ``blowup``, its lower bound).
        tol, gtol: the resolved tolerances.
        rise_tol, blowup, max_iters: the options.
        eps, tiny: of the problem's dtype and of the energies' dtype.
    """

    def __init__(self, history: History, x: Tensor, y0: Tensor, *, tol: float, gtol: float, rise_tol: float,
                 blowup: float, max_iters: int, eps: float, tiny: float):
        e0, g0 = history.energies[0], history.grad_norms[0]
        B = e0.shape[0]
        self.history, self.x, self.y0 = history, x, y0
        self.tol, self.gtol, self.rise_tol, self.blowup, self.eps, self.tiny = tol, gtol, rise_tol, blowup, eps, tiny
        self.e, self.gn = e0, g0  # of the current iterate
        self.e0, self.e_min, self.g0 = e0, e0.copy(), g0
        self.active = np.ones(B, dtype=bool)
        self.status = ["max_iters"] * B
        self.reason = [f"reached max_iters={max_iters}"] * B
        self.iterations = np.zeros(B, dtype=np.int64)
        self.limit: np.ndarray | None = None  # the blow-up limit, once needed
        self.none = np.zeros(B, dtype=bool)

    def _stop(self, mask: np.ndarray, status: str, why: str, it: int) -> None:
        for b in np.flatnonzero(mask):
            self.status[b], self.reason[b] = status, why
            self.iterations[b] = it

    def judge(self, it: int, out: Any, at_new: np.ndarray) -> np.ndarray:
        """Apply the rules to iteration ``it``'s step ``out`` (a ``StepOutput``) whose new point has
        the host scalars ``at_new`` (energy, gradient norm, ``max |y|``; NaN/inf where any entry
        is). Stops the samples that converged, diverged or stalled, with their reasons, and returns
        ``ok``: the active samples whose new point is kept (those that did not diverge)."""
        e_new, gn_new, y_max = at_new
        acc = True if out.accepted is None else _host_mask(out.accepted)
        own_div = self.none if out.diverged is None else _host_mask(out.diverged)
        done = self.none if out.done is None else _host_mask(out.done)
        active, e_min = self.active, self.e_min
        with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf are judged below, not warned about
            finite = np.isfinite(at_new).all(0)
            if self.limit is None and (y_max > self.blowup).any():
                self.limit = self.blowup * (1.0 + _host(_max_abs(self.x.detach()), _max_abs(self.y0.detach())).sum(0))
            runaway = self.none if self.limit is None else finite & (y_max > self.limit)
            scale = np.abs(e_min) + np.abs(self.e0 - e_min) + self.eps**0.5
            rise = finite & (e_new - e_min > self.rise_tol * scale)
            div = active & (~finite | runaway | rise | own_div)
            ok = active & ~div
            rel = np.abs(self.e - e_new) / np.maximum(np.maximum(np.abs(self.e), np.abs(e_new)), self.tiny)
            by_e = acc & (rel <= self.tol)
            by_g = gn_new <= self.gtol * self.g0
        conv = ok & (by_e | by_g | done)
        stalled = self.none if out.stalled is None else ok & ~conv & _host_mask(out.stalled)
        ended = div | conv | stalled
        if ended.any():  # the per-sample reasons (rare: at most once per sample)
            self._stop(active & ~finite, "diverged", "a value became non-finite (NaN or inf)", it)
            self._stop(active & finite & runaway, "diverged",
                       "the iterate ran away (|y| grew past the blow-up limit): the energy looks unbounded below", it)
            self._stop(active & finite & ~runaway & rise, "diverged",
                       f"the energy rose by more than rise_tol={self.rise_tol} times its scale", it)
            self._stop(active & finite & ~runaway & ~rise & own_div, "diverged", out.diverge_reason, it)
            self._stop(conv & done, "converged", "solved exactly", it)
            self._stop(conv & ~done & by_g, "converged", f"relative gradient norm <= gtol={self.gtol:g}", it)
            self._stop(conv & ~done & ~by_g, "converged", f"relative energy change <= tol={self.tol:g}", it)
            self._stop(stalled, "stalled", out.stall_reason, it)
            self.active = active & ~ended
        return ok

    def advance(self, ok: np.ndarray, at_new: np.ndarray, seconds: float) -> None:
        """Keep the new energy and gradient norm of the ``ok`` samples (the others keep theirs) and
        record the row."""
        if ok.all():
            self.e, self.gn = at_new[0], at_new[1]
        else:
            self.e, self.gn = np.where(ok, at_new[0], self.e), np.where(ok, at_new[1], self.gn)
        self.e_min = np.minimum(self.e_min, self.e)
        self.history.append(self.e, self.gn, seconds)

    def finish(self, it: int) -> None:
        """The samples still active ran ``it`` iterations (``max_iters``, or all others stopped)."""
        self.iterations[self.active] = it


def report_outcome(res: SolveResult, on_diverge: str) -> None:
    """Warn or raise for diverged samples; warn for stalled ones."""
    bad = [b for b, s in enumerate(res.status) if s == "diverged"]
    if bad:
        msg = (
            f"{res.method}: sample(s) {bad} diverged: {res.reason[bad[0]]}. "
            "The energy may be ill-posed (see E.check_well_posed); for mean_field try "
            "damping < 1 or adaptive=True."
        )
        if on_diverge == "raise":
            raise DivergenceError(msg)
        if on_diverge == "warn":
            warnings.warn(msg, DivergenceWarning, stacklevel=3)
    stalled = [b for b, s in enumerate(res.status) if s == "stalled"]
    if stalled and on_diverge != "ignore":
        warnings.warn(
            f"{res.method}: sample(s) {stalled} stalled before converging: {res.reason[stalled[0]]}",
            SolverWarning,
            stacklevel=3,
        )
