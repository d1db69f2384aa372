"""L-BFGS: energycrf's batched, preconditioned version, and the two peers a user would pick.

``"lbfgs"`` (:class:`LBFGS`): limited-memory BFGS run independently per sample (each
sample has its own memory, step and line search, all evaluated in one batched call).
The search direction is :math:`d = -H_t g` from the two-loop recursion over the last
``m`` pairs :math:`s_k = y_{k+1} - y_k`, :math:`q_k = g_{k+1} - g_k`, with initial inverse
Hessian :math:`H^0 = \\gamma P`, where ``P`` applies the inverse curvature blocks,
:math:`(P v)_i = A_i^{-1} v_i` (the mean-field step as preconditioner) and
:math:`\\gamma = s^\\top q / q^\\top P q`. The step length comes from a backtracking
Armijo search (:math:`E(y + \\alpha d) \\le E(y) + c_1 \\alpha g^\\top d`) with quadratic
interpolation; pairs with :math:`s^\\top q \\le 0` (non-convex regions) are skipped.

``"torch_lbfgs"`` (:class:`TorchLBFGS`): ``torch.optim.LBFGS`` with the strong-Wolfe line
search, fed ``E.grad``; the whole batch is one problem.

``"scipy_lbfgs"`` (:class:`ScipyLBFGS`): ``scipy.optimize.minimize(method="L-BFGS-B")`` in
float64, fed the analytic gradient; the whole batch is one problem.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import (Problem, Solver, StepOutput, _device_mask, _device_values, _host, _max_abs, accepted_point,
                   check_divergence_limits, check_start, report_outcome, sample_dot, sample_norm)
from .quadratic import Preconditioned, check_refine, make_preconditioner, quadratic_start
from .result import SolveResult

__all__ = ["LBFGS", "TorchLBFGS", "ScipyLBFGS"]


def _col(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


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
            (:class:`~energycrf.solvers.quadratic.ChebyshevPreconditioner`: ``degree - 1``
            products with it, no FFT; with ``y0="quadratic"`` the start uses it too; a
            ``ValueError`` when the quadratic part has no spectral bounds); ``"none"``
            (``False``) the identity.
        refine: with ``precondition="fft"``, Richardson steps on the exact quadratic part
            that correct the circulant inverse at the image boundary (one gradient of the
            quadratic terms and one FFT pair each; ``0``: the plain circulant inverse). An odd
            count is lowered by one for a quadratic part that is not translation invariant,
            where it could make ``H^0`` indefinite (:class:`~energycrf.solvers.quadratic.SpectralPreconditioner`).
        degree: with ``precondition="chebyshev"``, the Chebyshev degree ``m`` (``None``: the
            smallest with accuracy :data:`~energycrf.solvers.quadratic.CHEBYSHEV_ACCURACY`).
        start_degree: with ``precondition="chebyshev"`` and ``y0="quadratic"``, the start's degree
            (``None``: the smallest with accuracy
            :data:`~energycrf.solvers.quadratic.CHEBYSHEV_START_ACCURACY`; the first step corrects it).
        c1: Armijo constant.
        max_backtracks: trials per line search before the sample is reported stalled.
    """

    name = "lbfgs"
    monotone = True

    def __init__(self, history: int = 10, precondition: str | bool = "blocks", c1: float = 1e-4,
                 max_backtracks: int = 30, refine: int = 1, degree: int | None = None,
                 start_degree: int | None = None):
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history: expected an int >= 1, got {history!r}")
        if not 0.0 < c1 < 0.5:
            raise ValueError(f"c1: expected a number in (0, 0.5), got {c1!r}")
        self._set_preconditioner(precondition, degree, start_degree)
        self.history = history
        self.c1, self.max_backtracks, self.refine = float(c1), int(max_backtracks), check_refine(refine)

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> Any:
        P = make_preconditioner(self.precondition, problem, y, refine=self.refine, degree=self.degree)
        return {"pairs": [], "P": P, "gamma": None, "pending": None}

    def _P(self, state: Any, v: Tensor) -> Tensor:
        return v if state["P"] is None else state["P"](v)

    def _take_pending(self, state: Any, Pg: Tensor) -> None:
        """Store the last step's pair ``s = y_new - y``, ``q = g_new - g`` (made here, not in the
        step: a solve's last step needs none) with ``P q = P g_new - P g_old``, when
        ``s^T q > eps |s| |q|``, and update ``gamma``."""
        pending, state["pending"] = state["pending"], None
        if pending is None:
            return
        y_old, y_new, g_old, g_new, ok, Pg_old = pending
        ok = _device_mask(ok, y_new)  # the samples whose step was accepted (host mask)
        s, qv = y_new - y_old, g_new - g_old
        sq = sample_dot(s, qv)
        valid = ok & (sq > torch.finfo(s.dtype).eps * sample_norm(s) * sample_norm(qv))
        if not bool(valid.any()):
            return
        rho = torch.where(valid, 1.0 / torch.where(valid, sq, torch.ones_like(sq)), torch.zeros_like(sq))
        Pq = Pg - Pg_old
        state["pairs"].append((s, qv, rho, Pq))
        if len(state["pairs"]) > self.history:
            state["pairs"].pop(0)
        qPq = sample_dot(qv, Pq)
        gam = torch.where(valid & (qPq > 0), sq / torch.where(qPq > 0, qPq, torch.ones_like(qPq)), torch.ones_like(sq))
        state["gamma"] = gam if state["gamma"] is None else torch.where(valid, gam, state["gamma"])

    def _direction(self, state: Any, g: Tensor, Pg: Tensor) -> Tensor:
        """The two-loop recursion's direction ``-H g`` with ``H^0 = gamma P`` (``gamma``: 1 before the first pair)."""
        pairs = state["pairs"]
        if not pairs:
            return -Pg if state["gamma"] is None else -_col(state["gamma"]) * Pg
        q = g
        r = Pg.clone()
        alphas = []
        for k, (s, qv, rho, Pq) in enumerate(reversed(pairs)):
            a = rho * sample_dot(s, q)
            if k + 1 < len(pairs):
                q = q - _col(a) * qv
            r.sub_(_col(a) * Pq)
            alphas.append(a)
        if state["gamma"] is not None:
            r.mul_(_col(state["gamma"]))
        for (s, qv, rho, _), a in zip(pairs, reversed(alphas)):
            b = rho * sample_dot(qv, r)
            r.add_(_col(a - b) * s)
        return r.neg_()

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: Any) -> StepOutput:
        eps = torch.finfo(y.dtype).eps
        Pg = self._P(state, g)
        self._take_pending(state, Pg)
        # the direction is sign * d: without pairs or scale -P g, whose sign the slope and the
        # trial points take (no pass to negate it)
        plain = not state["pairs"] and state["gamma"] is None
        d, sign = (Pg, -1.0) if plain else (self._direction(state, g, Pg), 1.0)
        # the per-sample scalars of the line search on the host, in float64 (one transfer each)
        e_h, gd = _host(e, sample_dot(g, d))
        gd = sign * gd
        bad = ~(gd < 0)  # not a descent direction (or NaN): fall back to the preconditioned gradient
        if bad.any():
            d0 = -Pg
            d, sign = torch.where(_col(_device_mask(bad, y)), d0, sign * d), 1.0
            gd = np.where(bad, _host(sample_dot(g, d0))[0], gd)
        alpha = np.ones_like(e_h)
        if state["gamma"] is None and state["P"] is None:  # first step without any scale
            alpha = np.minimum(1.0 / np.maximum(_host(g.flatten(1).abs().sum(1))[0], torch.finfo(y.dtype).tiny), 1.0)
            y_try = torch.addcmul(y, _col(_device_values(sign * alpha, y)), d)
        else:
            y_try = torch.add(y, d, alpha=sign)
        e_try_t, g_try = problem.energy_and_grad(y_try)  # the unit step usually passes: its gradient is ready
        # with the driver's scalars of the point (its gradient norm and max |y|): one transfer
        at_try = _host(e_try_t, sample_norm(g_try), _max_abs(y_try))
        e_try = at_try[0]
        with np.errstate(invalid="ignore", over="ignore"):
            ok = e_try <= e_h + self.c1 * alpha * gd
        first_ok, alpha0 = ok, alpha
        for _ in range(self.max_backtracks):
            if ok.all():
                break
            # minimiser of the quadratic through E(y), slope gd and E(y + alpha d), kept in [0.1, 0.5] alpha
            with np.errstate(all="ignore"):
                denom = 2.0 * (e_try - e_h - gd * alpha)
                a_q = np.where(denom > 0, -gd * alpha * alpha / np.where(denom > 0, denom, 1.0), 0.5 * alpha)
            a_q = np.where(np.isfinite(a_q), a_q, 0.1 * alpha)
            alpha = np.where(ok, alpha, np.clip(a_q, 0.1 * alpha, 0.5 * alpha))
            ok_t = _device_mask(ok, y)
            y_try = torch.where(_col(ok_t), y_try, y + _col(_device_values(sign * alpha, y)) * d)
            e_try_t = torch.where(ok_t, e_try_t, problem.energy(y_try))
            (e_try,) = _host(e_try_t)
            with np.errstate(invalid="ignore", over="ignore"):
                ok = e_try <= e_h + self.c1 * alpha * gd
        if first_ok.all():  # the usual case: the unit step, all accepted, its scalars already here
            state["pending"] = (y, y_try, g, g_try, ok, Pg)
            return StepOutput(y=y_try, energy=e_try_t, grad=g_try, host=at_try)
        y_new, e_new, g_new = accepted_point(problem, y, e, g, y_try, e_try_t, g_try,
                                             _device_mask(first_ok, y), _device_mask(ok, y))
        if ok.any():
            state["pending"] = (y, y_new, g, g_new, ok, Pg)
        with np.errstate(invalid="ignore", over="ignore"):
            roundoff = (-alpha0 * gd) <= 16 * eps * np.abs(e_h)  # no decrease to find: a stop, not a stall
        return StepOutput(
            y=y_new,
            energy=e_new,
            grad=g_new,
            accepted=ok | roundoff,
            stalled=~ok & ~roundoff,
            stall_reason=f"the line search found no decrease in {self.max_backtracks} trials",
        )


class TorchLBFGS(Solver):
    """``torch.optim.LBFGS`` (strong-Wolfe line search) on the sum of the batch's energies.

    One driver iteration is one L-BFGS iteration (``max_iter=1`` per ``step`` call; the
    optimiser keeps its memory across calls). The closure returns ``E(y).sum()`` and sets
    ``y.grad = E.grad(y)``. Its own stopping tests are switched off; the driver stops.

    Making the solver makes a throwaway ``torch.optim.LBFGS``: the first optimiser a process
    makes imports ``torch._dynamo`` (about 0.9 s), a one-time cost that would otherwise land in
    the first solve's times.

    Args:
        history: ``history_size``.
        line_search: ``"strong_wolfe"`` or ``None`` (fixed ``lr``).
        lr: step scale.
    """

    name = "torch_lbfgs"

    def __init__(self, history: int = 10, line_search: str | None = "strong_wolfe", lr: float = 1.0):
        if line_search not in ("strong_wolfe", None):
            raise ValueError(f"line_search: expected 'strong_wolfe' or None, got {line_search!r}")
        self.history, self.line_search, self.lr = int(history), line_search, float(lr)
        torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])  # the one-time import, outside the solve

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> Any:
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
                p.grad = problem.grad(p.detach())
                cache.update(y=p.detach().clone(), e=e_b, g=p.grad.clone())
            return e_b.sum()

        return {"p": p, "opt": opt, "closure": closure, "cache": cache}

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: Any) -> StepOutput:
        p, cache = state["p"], state["cache"]
        state["opt"].step(state["closure"])
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
    own loop; the history is recorded from its per-iteration callback, so every row of
    :attr:`SolveResult.energies` is an accepted L-BFGS-B iterate.

    Args:
        history: ``maxcor``.
    """

    name = "scipy_lbfgs"
    monotone = True

    def __init__(self, history: int = 10):
        self.history = int(history)

    def solve(self, E, x, c=None, *, y0=None, max_iters=500, tol=None, gtol=None,
              on_diverge="warn", rise_tol=1.0, blowup=1e6, well_posed="ignore", progress=False,
              callback=None) -> SolveResult:
        from scipy.optimize import minimize

        Problem(E, x, c)  # validates the arguments
        if on_diverge not in ("warn", "raise", "ignore"):
            raise ValueError(f"on_diverge: expected 'warn', 'raise' or 'ignore', got {on_diverge!r}")
        check_divergence_limits(rise_tol, blowup)
        if not isinstance(max_iters, int) or isinstance(max_iters, bool) or max_iters < 0:
            raise ValueError(f"max_iters: expected a non-negative int, got {max_iters!r}")
        start_name = check_start(y0, x)
        if start_name is not None:
            y0 = None
        if well_posed != "ignore" and hasattr(E, "check_well_posed"):
            E.check_well_posed(c, on_fail=well_posed)
        eps = torch.finfo(x.dtype).eps
        tol = max(1e-9, 10 * eps) if tol is None else float(tol)
        gtol_rel = (1e-5 if x.dtype == torch.float32 else 1e-8) if gtol is None else float(gtol)
        if not (tol >= 0 and gtol_rel >= 0):  # NaN fails too
            raise ValueError(f"tol, gtol: expected non-negative numbers, got tol={tol}, gtol={gtol_rel}")

        E64 = copy.deepcopy(E).to(torch.float64)
        x64 = x.detach().to(torch.float64)
        c64 = c.detach().to(torch.float64) if (c is not None and c.is_floating_point()) else c
        prob = Problem(E64, x64, c64)
        shape = x.shape
        cache: dict[str, Any] = {}

        def fun(v: np.ndarray):
            y = torch.from_numpy(v).view(shape).to(x64.device)
            e_b = prob.energy(y)
            g = prob.grad(y)
            cache.update(v=v.copy(), e=e_b, gn=sample_norm(g))
            return float(e_b.sum()), g.detach().cpu().numpy().ravel().astype(np.float64)

        t0 = time.perf_counter()
        if start_name == "quadratic":
            start = quadratic_start(prob)
        else:
            start = (x64 if y0 is None else y0.detach().to(torch.float64)).clone()
        f0, g0 = fun(start.cpu().numpy().ravel())
        e_hist, g_hist = [cache["e"].clone()], [cache["gn"].clone()]
        t_hist = [time.perf_counter() - t0 if start_name is not None else 0.0]
        g0_inf = float(np.abs(g0).max())

        t_cb = [0.0]

        def scipy_callback(intermediate_result):
            v = intermediate_result.x
            if not np.array_equal(v, cache["v"]):
                fun(v)
            e_hist.append(cache["e"].clone())
            g_hist.append(cache["gn"].clone())
            t_hist.append(time.perf_counter() - t0 - t_cb[0])
            if callback is not None:
                t1 = time.perf_counter()
                y_it = torch.from_numpy(v.copy()).view(shape).to(device=x.device, dtype=x.dtype)
                callback(len(e_hist) - 1, y_it, cache["e"].to(x.dtype))
                t_cb[0] += time.perf_counter() - t1

        res = minimize(
            fun, start.cpu().numpy().ravel(), jac=True, method="L-BFGS-B", callback=scipy_callback,
            options={"maxcor": self.history, "maxiter": max_iters, "maxfun": 20 * max(max_iters, 1),
                     "ftol": tol, "gtol": gtol_rel * g0_inf},
        )
        wall = time.perf_counter() - t0 - t_cb[0]
        y = torch.from_numpy(res.x).view(shape).to(device=x.device, dtype=x.dtype)
        finite = bool(np.isfinite(res.x).all()) and bool(np.isfinite(res.fun))
        runaway = float(np.abs(res.x).max()) > blowup * (1 + float(x.abs().max()) + float(start.abs().max()))
        B = shape[0]
        if not finite or runaway:
            st, why = "diverged", ("a value became non-finite" if not finite else "the iterate ran away: the energy looks unbounded below")
        elif res.success:
            st, why = "converged", f"scipy: {res.message}"
        elif res.nit >= max_iters or "LIMIT" in str(res.message).upper():
            st, why = "max_iters", f"scipy: {res.message}"
        else:  # e.g. ABNORMAL: its line search failed
            st, why = "stalled", f"scipy: {res.message or 'the line search failed'}"
        n_it = len(e_hist) - 1
        out = SolveResult(
            y=y,
            energies=torch.stack(e_hist).to(x.dtype),
            grad_norms=torch.stack(g_hist).to(x.dtype),
            times=torch.tensor(t_hist, dtype=torch.float64),
            iterations=torch.full((B,), n_it, dtype=torch.long),
            converged=torch.full((B,), st == "converged", dtype=torch.bool),
            status=[st] * B,
            reason=[why] * B,
            method=self.name,
            wall_time=wall,
            evaluations=dict(prob.counts),
        )
        report_outcome(out, on_diverge)
        return out
