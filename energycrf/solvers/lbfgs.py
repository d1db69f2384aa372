"""L-BFGS: energycrf's batched, preconditioned version, and the two peers a user would pick.

``"lbfgs"`` (:class:`LBFGS`): limited-memory BFGS run independently per sample (each
sample has its own memory, step and line search, all evaluated in one batched call).
The search direction is :math:`d = -H_t g` from the two-loop recursion over the last
``m`` pairs :math:`s_k = y_{k+1} - y_k`, :math:`q_k = g_{k+1} - g_k`, with initial inverse
Hessian :math:`H^0 = \\gamma P`, where ``P`` applies the inverse curvature blocks,
:math:`(P v)_i = A_i^{-1} v_i` (the mean-field step as preconditioner) and
:math:`\\gamma = s^\\top q / q^\\top P q`. The step length comes from a backtracking
Armijo search (:math:`E(y + \\alpha d) \\le E(y) + c_1 \\alpha g^\\top d`) with quadratic
interpolation (:func:`~energycrf.solvers.line_search.armijo_backtracking`); pairs with
:math:`s^\\top q \\le 0` (non-convex regions) are skipped.

``"torch_lbfgs"`` (:class:`TorchLBFGS`): ``torch.optim.LBFGS`` with the strong-Wolfe line
search, fed ``E.grad``; the whole batch is one problem.

``"scipy_lbfgs"`` (:class:`ScipyLBFGS`): ``scipy.optimize.minimize(method="L-BFGS-B")`` in
float64, fed the analytic gradient; the whole batch is one problem.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .base import Problem, Solver, StepOutput, sample_dot, sample_norm
from .driver import History
from .host import _device_mask, _host
from .line_search import armijo_backtracking
from .options import SolveOptions
from .preconditioners.options import Preconditioned, make_preconditioner
from .preconditioners.spectral import check_refine
from .result import SolveResult

__all__ = ["LBFGS", "LBFGSState", "CurvaturePair", "PendingPair", "TorchLBFGS", "ScipyLBFGS"]


def _col(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


class CurvaturePair(NamedTuple):
    r"""One stored pair of the two-loop recursion, per sample (``[B, ...]`` / ``[B]``).

    Attributes:
        s: :math:`s_k = y_{k+1} - y_k`.
        q: :math:`q_k = g_{k+1} - g_k`.
        rho: :math:`\rho_k = 1 / s_k^\top q_k` (``0`` for the samples whose pair was skipped).
        Pq: :math:`P q_k = P g_{k+1} - P g_k` (``P`` is linear: no application of its own).
    """

    s: Tensor
    q: Tensor
    rho: Tensor
    Pq: Tensor


class PendingPair(NamedTuple):
    """The last step's ends, made into a :class:`CurvaturePair` at the next step (a solve's last
    step needs none).

    Attributes:
        y, y_new: :math:`y_k` and :math:`y_{k+1}`.
        g, g_new: :math:`g_k` and :math:`g_{k+1}`.
        accepted: host bool ``[B]``: the samples whose step was accepted (the others' pair is skipped).
        Pg: :math:`P g_k`.
    """

    y: Tensor
    y_new: Tensor
    g: Tensor
    g_new: Tensor
    accepted: np.ndarray
    Pg: Tensor


@dataclass
class LBFGSState:
    r"""L-BFGS's memory between steps.

    Attributes:
        P: the preconditioner, :math:`H^0 = \gamma P` (``None``: the identity).
        pairs: the last ``m`` (``history``) :class:`CurvaturePair`, oldest first.
        gamma: ``[B]`` the scale :math:`\gamma = s^\top q / q^\top P q` of each sample's newest
            valid pair; ``None`` before the first.
        pending: the last step's :class:`PendingPair`, or ``None``.
    """

    P: Callable[[Tensor], Tensor] | None
    pairs: list[CurvaturePair] = field(default_factory=list)
    gamma: Tensor | None = None
    pending: PendingPair | None = None

    def apply_P(self, v: Tensor) -> Tensor:
        """``P v`` (``v`` itself without a preconditioner)."""
        return v if self.P is None else self.P(v)


def _check_history(history: Any) -> None:
    """The number of curvature pairs kept (every L-BFGS variant's ``history``)."""
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ValueError(f"history: expected an int >= 1, got {history!r}")


class LBFGS(Preconditioned, Solver):
    """Batched, block-preconditioned L-BFGS with a backtracking Armijo search.

    Each iteration costs one fused energy-and-gradient evaluation at the trial point
    (``E.energy_and_grad``) when the unit step passes the Armijo test, and one application
    of the preconditioner ``P``: ``P`` is linear, so ``P q_k = P g_{k+1} - P g_k`` is kept
    with each pair and the two-loop recursion needs only ``P g`` of the current gradient.
    Backtracking trials evaluate the energy alone, then the gradient at the accepted point.

    Args:
        history: number of stored pairs ``m``.
        precondition: ``H^0`` (up to the scale ``gamma``): ``"blocks"`` (``True``) the
            inverse curvature blocks at ``y0``; ``"fft"`` the inverse of the circulant
            approximation of the energy's quadratic part (Unary + Pairwise), which removes
            the pairwise term's ill-conditioning (``"blocks"`` when there is none or it is
            singular); ``"chebyshev"`` a Chebyshev polynomial in the quadratic part's Hessian
            (:class:`~energycrf.solvers.preconditioners.chebyshev.ChebyshevPreconditioner`: ``degree - 1``
            products with it, no FFT; with ``y0="quadratic"`` the start uses it too; a
            ``ValueError`` when the quadratic part has no spectral bounds); ``"none"``
            (``False``) the identity.
        refine: with ``precondition="fft"``, Richardson steps on the exact quadratic part
            that correct the circulant inverse at the image boundary (one gradient of the
            quadratic terms and one FFT pair each; ``0``: the plain circulant inverse). An odd
            count is lowered by one for a quadratic part that is not translation invariant,
            where it could make ``H^0`` indefinite (:class:`~energycrf.solvers.preconditioners.spectral.SpectralPreconditioner`).
        degree: with ``precondition="chebyshev"``, the Chebyshev degree ``m`` (``None``: the
            smallest with accuracy :data:`~energycrf.solvers.preconditioners.chebyshev.CHEBYSHEV_ACCURACY`).
        start_degree: with ``precondition="chebyshev"`` and ``y0="quadratic"``, the start's degree
            (``None``: the smallest with accuracy
            :data:`~energycrf.solvers.preconditioners.chebyshev.CHEBYSHEV_START_ACCURACY`; the first step corrects it).
        c1: Armijo constant.
        max_backtracks: trials per line search before the sample is reported stalled.
    """

    name = "lbfgs"
    monotone = True

    def __init__(self, history: int = 10, precondition: str | bool = "blocks", c1: float = 1e-4,
                 max_backtracks: int = 30, refine: int = 1, degree: int | None = None,
                 start_degree: int | None = None):
        _check_history(history)
        if not 0.0 < c1 < 0.5:
            raise ValueError(f"c1: expected a number in (0, 0.5), got {c1!r}")
        self._set_preconditioner(precondition, degree, start_degree)
        self.history = history
        self.c1, self.max_backtracks, self.refine = float(c1), int(max_backtracks), check_refine(refine)

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> LBFGSState:
        return LBFGSState(P=make_preconditioner(self.precondition, problem, y, refine=self.refine, degree=self.degree))

    def _take_pending(self, state: LBFGSState, Pg: Tensor) -> None:
        """Store the pending pair ``s = y_new - y``, ``q = g_new - g`` with ``P q = P g_new - P g_old``
        (``Pg``: ``P g_new``), for the samples with ``s^T q > eps |s| |q|``, and update ``gamma``."""
        pending, state.pending = state.pending, None
        if pending is None:
            return
        ok = _device_mask(pending.accepted, pending.y_new)  # the samples whose step was accepted
        s, qv = pending.y_new - pending.y, pending.g_new - pending.g
        sq = sample_dot(s, qv)
        valid = ok & (sq > torch.finfo(s.dtype).eps * sample_norm(s) * sample_norm(qv))
        if not bool(valid.any()):
            return
        rho = torch.where(valid, 1.0 / torch.where(valid, sq, torch.ones_like(sq)), torch.zeros_like(sq))
        Pq = Pg - pending.Pg
        state.pairs.append(CurvaturePair(s, qv, rho, Pq))
        if len(state.pairs) > self.history:
            state.pairs.pop(0)
        qPq = sample_dot(qv, Pq)
        gam = torch.where(valid & (qPq > 0), sq / torch.where(qPq > 0, qPq, torch.ones_like(qPq)), torch.ones_like(sq))
        state.gamma = gam if state.gamma is None else torch.where(valid, gam, state.gamma)

    def _direction(self, state: LBFGSState, g: Tensor, Pg: Tensor) -> Tensor:
        """The two-loop recursion's direction ``-H g`` with ``H^0 = gamma P`` (``gamma``: 1 before the first pair)."""
        pairs = state.pairs
        if not pairs:
            return -Pg if state.gamma is None else -_col(state.gamma) * Pg
        q = g
        r = Pg.clone()
        alphas = []
        for k, (s, qv, rho, Pq) in enumerate(reversed(pairs)):
            a = rho * sample_dot(s, q)
            if k + 1 < len(pairs):
                q = q - _col(a) * qv
            r.sub_(_col(a) * Pq)
            alphas.append(a)
        if state.gamma is not None:
            r.mul_(_col(state.gamma))
        for (s, qv, rho, _), a in zip(pairs, reversed(alphas)):
            b = rho * sample_dot(qv, r)
            r.add_(_col(a - b) * s)
        return r.neg_()

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: LBFGSState) -> StepOutput:
        Pg = state.apply_P(g)
        self._take_pending(state, Pg)
        # the direction is sign * d: without pairs or scale -P g, whose sign the slope and the
        # trial points take (no pass to negate it)
        plain = not state.pairs and state.gamma is None
        d, sign = (Pg, -1.0) if plain else (self._direction(state, g, Pg), 1.0)
        # the per-sample scalars of the line search on the host, in float64 (one transfer each)
        e_h, gd = _host(e, sample_dot(g, d))
        gd = sign * gd
        bad = ~(gd < 0)  # not a descent direction (or NaN): fall back to the preconditioned gradient
        if bad.any():
            d0 = -Pg
            d, sign = torch.where(_col(_device_mask(bad, y)), d0, sign * d), 1.0
            gd = np.where(bad, _host(sample_dot(g, d0))[0], gd)
        first = None  # the unit step, unless there is no scale at all
        if state.gamma is None and state.P is None:  # first step without any scale: at most 1 / |g|_1
            first = np.minimum(1.0 / np.maximum(_host(g.flatten(1).abs().sum(1))[0], torch.finfo(y.dtype).tiny), 1.0)
        search = armijo_backtracking(problem, y, e, g, d, energy=e_h, slope=gd, sign=sign, step=first, c1=self.c1,
                                     max_backtracks=self.max_backtracks)
        if search.ok.any():
            state.pending = PendingPair(y, search.y, g, search.grad, search.ok, Pg)
        return search.step_output(f"the line search found no decrease in {self.max_backtracks} trials")


@dataclass
class TorchLBFGSState:
    """``torch.optim.LBFGS``'s set-up, kept across steps (the optimiser keeps its own memory).

    Attributes:
        p: the optimised parameter, a leaf copy of ``y``.
        opt: the optimiser over ``[p]``.
        closure: sets ``p.grad = grad E(p)`` and returns ``E(p).sum()``.
        cache: the closure's last point ``y``, its energies ``e`` and gradient ``g`` (so a step whose
            point the closure evaluated last needs no new evaluation).
    """

    p: Tensor
    opt: torch.optim.LBFGS
    closure: Callable[[], Tensor]
    cache: dict[str, Tensor]


class TorchLBFGS(Solver):
    """``torch.optim.LBFGS`` (strong-Wolfe line search) on the sum of the batch's energies.

    One driver iteration is one L-BFGS iteration (``max_iter=1`` per ``step`` call; the
    optimiser keeps its memory across calls). The closure returns ``E(y).sum()`` and sets
    ``y.grad = E.grad(y)``. Its own stopping tests are switched off; the driver stops.

    Making the solver makes a throwaway ``torch.optim.LBFGS``: the first optimiser a process
    makes imports ``torch._dynamo``, a one-time cost (see ``docs/solvers.md``, "Compare
    solvers") that would otherwise land in the first solve's times.

    Args:
        history: ``history_size``.
        line_search: ``"strong_wolfe"`` or ``None`` (fixed ``lr``).
        lr: step scale.
    """

    name = "torch_lbfgs"

    def __init__(self, history: int = 10, line_search: str | None = "strong_wolfe", lr: float = 1.0):
        if line_search not in ("strong_wolfe", None):
            raise ValueError(f"line_search: expected 'strong_wolfe' or None, got {line_search!r}")
        _check_history(history)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr < math.inf):
            raise ValueError(f"lr: expected a positive finite number, got {lr!r}")
        self.history, self.line_search, self.lr = history, line_search, float(lr)
        torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])  # the one-time import, outside the solve

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> TorchLBFGSState:
        p = y.detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            # max_eval bounds the line search too (max_ls = max_eval - 1): give it torch's usual 25
            [p], lr=self.lr, max_iter=1, max_eval=26, history_size=self.history, line_search_fn=self.line_search,
            tolerance_grad=0.0, tolerance_change=0.0,
        )
        cache: dict[str, Tensor] = {}

        def closure() -> Tensor:
            with torch.no_grad():
                e_b = problem.energy(p.detach())
                p.grad = problem.grad(p.detach()).contiguous()  # torch's LBFGS views it flat
                cache.update(y=p.detach().clone(), e=e_b, g=p.grad.clone())
            return e_b.sum()

        return TorchLBFGSState(p=p, opt=opt, closure=closure, cache=cache)

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: TorchLBFGSState) -> StepOutput:
        p, cache = state.p, state.cache
        state.opt.step(state.closure)
        y_new = p.detach().clone()
        if "y" in cache and torch.equal(cache["y"], y_new):
            e_new, g_new = cache["e"], cache["g"]
        else:
            e_new, g_new = problem.energy(y_new), None
        # its line search can end without moving: that is not convergence
        moved = (y_new != y).flatten(1).any(1)
        return StepOutput(
            y=y_new, energy=e_new, grad=g_new, accepted=moved, stalled=~moved,
            stall_reason="torch.optim.LBFGS's line search made no progress",
        )


class ScipyLBFGS(Solver):
    """``scipy.optimize.minimize(method="L-BFGS-B")`` in float64 with the analytic gradient.

    The batch is one flat vector; the energy is ``E(y).sum()`` and the gradient
    ``E.grad(y)`` (both computed by torch on a float64 copy of the energy). scipy runs its
    own loop (:meth:`_minimise`); the set-up, the start, the history, the result and the report
    are the driver's, so it takes the same options. The history is recorded from scipy's
    per-iteration callback, so every row of :attr:`SolveResult.energies` is an accepted L-BFGS-B
    iterate. The whole batch has one outcome: ``tol`` is scipy's ``ftol``, ``gtol`` is relative to
    the start's largest gradient entry, ``rise_tol`` and ``progress`` do not apply.

    Args:
        history: ``maxcor``.
    """

    name = "scipy_lbfgs"
    monotone = True

    def __init__(self, history: int = 10):
        _check_history(history)
        self.history = history

    def _minimise(self, problem: Problem, y0: Tensor, start: str | None, opts: SolveOptions) -> SolveResult:
        """scipy's loop on a float64 copy of the problem, recorded and judged for the whole batch."""
        from scipy.optimize import minimize

        x, c = problem.x, problem.c
        tol, gtol = opts.tolerances(x.dtype)
        x64 = x.detach().to(torch.float64)
        c64 = c.detach().to(torch.float64) if (c is not None and c.is_floating_point()) else c
        prob = Problem(copy.deepcopy(problem.E).to(torch.float64), x64, c64)
        shape = x.shape
        cache: dict[str, Any] = {}

        def fun(v: np.ndarray):
            y = torch.from_numpy(v).view(shape).to(x64.device)
            e_b = prob.energy(y)
            g = prob.grad(y)
            cache.update(v=v.copy(), e=e_b, gn=sample_norm(g))
            return float(e_b.sum()), g.detach().cpu().numpy().ravel().astype(np.float64)

        t0 = time.perf_counter()
        y_start = self._start_point(prob, y0.detach().to(torch.float64), start)
        _, g0 = fun(y_start.cpu().numpy().ravel())
        history = History()
        history.append(*_host(cache["e"], cache["gn"]), time.perf_counter() - t0 if start is not None else 0.0)
        t_cb = [0.0]

        def scipy_callback(intermediate_result):
            v = intermediate_result.x
            if not np.array_equal(v, cache["v"]):
                fun(v)
            history.append(*_host(cache["e"], cache["gn"]), time.perf_counter() - t0 - t_cb[0])
            if opts.callback is not None:
                t1 = time.perf_counter()
                y_it = torch.from_numpy(v.copy()).view(shape).to(device=x.device, dtype=x.dtype)
                opts.callback(len(history.energies) - 1, y_it, cache["e"].to(x.dtype))
                t_cb[0] += time.perf_counter() - t1

        res = minimize(
            fun, y_start.cpu().numpy().ravel(), jac=True, method="L-BFGS-B", callback=scipy_callback,
            options={"maxcor": self.history, "maxiter": opts.max_iters, "maxfun": 20 * max(opts.max_iters, 1),
                     "ftol": tol, "gtol": gtol * float(np.abs(g0).max())},
        )
        wall = time.perf_counter() - t0 - t_cb[0]
        y = torch.from_numpy(res.x).view(shape).to(device=x.device, dtype=x.dtype)
        st, why = self._outcome(res, x, y_start, opts)
        if st == "stalled" and self._falls_without_bound(prob, torch.from_numpy(res.x).view(shape).to(x64.device),
                                                         self._limit(x, y_start, opts)):
            st, why = "diverged", ("the energy falls without bound along the steepest-descent ray from scipy's "
                                   f"last point (scipy: {res.message}): it looks unbounded below")
        B, n_it = shape[0], len(history.energies) - 1
        return history.result(y, x.dtype, status=[st] * B, reason=[why] * B, iterations=np.full(B, n_it),
                              method=self.name, wall_time=wall, evaluations=prob.counts)

    @staticmethod
    def _limit(x: Tensor, y_start: Tensor, opts: SolveOptions) -> float:
        """The driver's blow-up limit ``blowup (1 + max|x| + max|y0|)`` over the batch."""
        return opts.blowup * (1 + float(x.abs().max()) + float(y_start.abs().max()))

    @staticmethod
    def _falls_without_bound(prob: Problem, y: Tensor, limit: float) -> bool:
        """Whether the energy keeps falling along the ray ``y - t g / max|g|`` (``t = 1, 2, 4, ...``)
        until the point passes the blow-up limit (or turns non-finite): the driver's run-away rule,
        probed after scipy's line search gave up (``ABNORMAL``), which it does on an energy that
        is unbounded below before its iterate runs away. A few dozen evaluations at most."""
        g = prob.grad(y)
        d = -g / g.abs().max().clamp_min(torch.finfo(g.dtype).tiny)
        e_prev, t = float(prob.energy(y).sum()), 1.0
        while True:
            z = y + t * d
            e = float(prob.energy(z).sum())
            if not math.isfinite(e):
                return True
            if not e < e_prev:
                return False
            if float(z.abs().max()) > limit:
                return True
            e_prev, t = e, 2.0 * t

    @staticmethod
    def _outcome(res: Any, x: Tensor, y_start: Tensor, opts: SolveOptions) -> tuple[str, str]:
        """The batch's status and reason from scipy's result: diverged (non-finite, or past the
        blow-up limit over the batch), converged, out of iterations, or stalled (its line search
        failed; :meth:`_minimise` then probes for an unbounded energy)."""
        finite = bool(np.isfinite(res.x).all()) and bool(np.isfinite(res.fun))
        limit = ScipyLBFGS._limit(x, y_start, opts)
        if not finite:
            return "diverged", "a value became non-finite"
        if float(np.abs(res.x).max()) > limit:
            return "diverged", "the iterate ran away: the energy looks unbounded below"
        if res.success:
            return "converged", f"scipy: {res.message}"
        if res.nit >= opts.max_iters or "LIMIT" in str(res.message).upper():
            return "max_iters", f"scipy: {res.message}"
        return "stalled", f"scipy: {res.message or 'the line search failed'}"  # e.g. ABNORMAL
