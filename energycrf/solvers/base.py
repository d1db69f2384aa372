"""The driver loop every solver shares, and the per-site block solve.

A solver is one *step* (:meth:`Solver.step`): given ``y^{(t)}``, its energy and gradient,
return ``y^{(t+1)}``. :meth:`Solver.solve` owns the loop: it records the history, stops
each sample on its own (relative energy change or relative gradient norm), detects
divergence (energy rising, non-finite values, a run-away iterate), and times the run.

The update that coordinate descent, mean-field and the preconditioners share is the
site-wise majoriser step of ``energy-model.md``,

.. math::  y_i \\leftarrow y_i - A_i^{-1} g_i,

with ``g = grad E(y)`` and ``A_i`` the ``C x C`` curvature block of site ``i``
(``E.curvature``); :func:`block_solve` does it for all sites at once.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..energies.base import _sample_dot
from .result import DivergenceError, DivergenceWarning, SolveResult, SolverWarning

__all__ = ["Problem", "StepOutput", "Solver", "block_solve", "sample_norm", "sample_dot"]

_ON_DIVERGE = ("warn", "raise", "ignore")


# ----------------------------------------------------------------------------------------
# small batched helpers


sample_dot = _sample_dot  # per-sample inner product of two [B, ...] tensors -> [B] (the energies' own)


_STARTS = ("quadratic",)


def check_start(y0: Any, x: Tensor) -> str | None:
    """The named start (``"quadratic"``) when ``y0`` names one; ``None`` for ``None`` or a tensor
    shaped like ``x``; otherwise a ``ValueError`` naming what was expected and got."""
    if isinstance(y0, str):
        if y0 in _STARTS:
            return y0
        got = repr(y0)
    elif y0 is None or (isinstance(y0, Tensor) and y0.shape == x.shape):
        return None
    else:
        got = tuple(y0.shape) if isinstance(y0, Tensor) else type(y0).__name__
    raise ValueError(f"y0: expected None, a tensor shaped like x {tuple(x.shape)} or one of {_STARTS}, got {got}")


def sample_norm(a: Tensor) -> Tensor:
    """Per-sample Euclidean norm of a ``[B, ...]`` tensor -> ``[B]``."""
    return torch.linalg.vector_norm(a, dim=tuple(range(1, a.dim())))


def check_divergence_limits(rise_tol: Any, blowup: Any) -> None:
    """``rise_tol`` and ``blowup`` of :meth:`Solver.solve`: positive numbers (``inf`` switches a test
    off), or a ``ValueError`` naming the option."""
    for name, value in (("rise_tol", rise_tol), ("blowup", blowup)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}: expected a positive number (inf to switch the test off), got {value!r}")


def _host(*values: Tensor) -> np.ndarray:
    """``[len(values), B]`` float64 on the host: per-sample scalars in one transfer."""
    stacked = torch.stack(values)
    if stacked.requires_grad:
        stacked = stacked.detach()
    if stacked.dtype in (torch.float32, torch.float64):  # numpy widens these on the host
        return stacked.cpu().numpy().astype(np.float64)
    return stacked.to(device="cpu", dtype=torch.float64).numpy()


def _host_mask(mask: Tensor | np.ndarray) -> np.ndarray:
    """A ``[B]`` bool tensor (or host array) on the host."""
    return mask if isinstance(mask, np.ndarray) else mask.detach().cpu().numpy()


def _device_mask(mask: np.ndarray, like: Tensor) -> Tensor:
    """A host bool array as a ``[B]`` tensor on ``like``'s device."""
    return torch.from_numpy(mask).to(like.device)


def _device_values(values: np.ndarray, like: Tensor) -> Tensor:
    """Host float64 values as a ``[B]`` tensor of ``like``'s dtype and device."""
    return torch.from_numpy(values).to(dtype=like.dtype, device=like.device)


def _max_abs(a: Tensor) -> Tensor:
    """Per-sample ``max |a|`` of a ``[B, ...]`` tensor -> ``[B]`` (one pass; NaN if any entry is)."""
    return a.abs().amax(tuple(range(1, a.dim())))  # (vector_norm with ord=inf is ~20x slower on CPU)


def accepted_point(problem: "Problem", y: Tensor, e: Tensor, g: Tensor, y_try: Tensor, e_try: Tensor,
                   g_try: Tensor, first_ok: Tensor, ok: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, E, grad E)`` after a backtracking line search whose first trial was one fused
    evaluation (``g_try`` at the first trial): the trial where it passed (``ok``), else the old
    point. Samples that passed the first trial keep its gradient; those that passed after
    backtracking get one ``grad`` at the accepted point; rejected ones keep ``g``."""
    if bool(first_ok.all()):
        return y_try, e_try, g_try
    m = _bcast(ok, y)
    y_new, e_new = torch.where(m, y_try, y), torch.where(ok, e_try, e)
    g_new = torch.where(_bcast(first_ok, y), g_try, g)
    late = ok & ~first_ok
    if bool(late.any()):
        g_new = torch.where(_bcast(late, y), problem.grad(y_new), g_new)
    return y_new, e_new, g_new


def _bcast(mask: Tensor, like: Tensor) -> Tensor:
    """``[B]`` -> ``[B, 1, 1, ...]`` matching ``like``'s rank."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _positive_definite_blocks(A: Tensor) -> Tensor:
    """Symmetrise ``[..., C, C]`` blocks and make the non-PD ones positive definite.

    Blocks whose Cholesky factorisation fails (singular or indefinite curvature, e.g. a
    user term whose exact Hessian block is not positive) are rebuilt from their
    eigendecomposition with eigenvalues ``max(|lambda|, floor)`` (negative curvature
    mirrored, as in saddle-free Newton); ``floor`` is ``1e-6`` times the block's (or, for
    an all-zero block, the batch's) largest eigenvalue.
    """
    A = 0.5 * (A + A.transpose(-1, -2))
    _, info = torch.linalg.cholesky_ex(A)
    bad = info != 0
    if not bool(bad.any()):
        return A
    lam, V = torch.linalg.eigh(A[bad])
    big = lam.abs().amax(-1, keepdim=True)
    glob = A.diagonal(dim1=-2, dim2=-1).abs().amax()
    tiny = torch.finfo(A.dtype).eps ** 0.5
    floor = torch.clamp(1e-6 * torch.maximum(big, glob.expand_as(big)), min=tiny)
    lam = torch.maximum(lam.abs(), floor)
    A = A.clone()
    A[bad] = (V * lam.unsqueeze(-2)) @ V.transpose(-1, -2)
    return A


def block_solve(A: Tensor, g: Tensor) -> Tensor:
    """Solve ``A_i d_i = g_i`` at every site: ``A`` is ``[B, H, W, C, C]``, ``g`` ``[B, C, H, W]``.

    Returns ``d`` shaped like ``g``. Blocks are symmetrised and, where not positive
    definite, lifted to a small positive floor (see :func:`_positive_definite_blocks`)
    so that ``-d`` is always a descent direction. One batched Cholesky solve, no loop.
    """
    if A.shape[-1] == 1:  # scalar sites (grayscale): a division, same positive floor as below
        a = A[..., 0, 0]
        bad = ~(a > 0)
        if bool(bad.any()):
            tiny = torch.finfo(A.dtype).eps ** 0.5
            floor = torch.clamp(1e-6 * a.abs().amax(), min=tiny)
            a = torch.where(bad, torch.maximum(a.abs(), floor), a)
        return g / a.unsqueeze(1)
    A = _positive_definite_blocks(A)
    rhs = g.permute(0, 2, 3, 1).unsqueeze(-1)  # [B, H, W, C, 1]
    L = torch.linalg.cholesky(A)
    d = torch.cholesky_solve(rhs, L)
    return d.squeeze(-1).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------
# the problem a solver sees


class Problem:
    """An energy with its data bound: ``energy(y)``, ``grad(y)``, ``curvature(y)``.

    Counts evaluations (reported in :attr:`SolveResult.evaluations`) and runs them
    without building an autograd graph through the energy's parameters.
    """

    def __init__(self, E: Any, x: Tensor, c: Tensor | None = None):
        if not callable(E) or not hasattr(E, "grad"):
            raise TypeError(
                f"E: expected an energycrf Energy (callable with a .grad method), got {type(E).__name__}"
            )
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor [B, C, H, W], got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x: expected a [B, C, H, W] tensor (rank 4), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
        if c is not None and not isinstance(c, Tensor):
            raise TypeError(f"c: expected None or a torch.Tensor, got {type(c).__name__}")
        self.E, self.x, self.c = E, x, c
        self.counts = {"energy": 0, "grad": 0, "curvature": 0}
        self.radius: int | None = None  # set by solvers that colour sites
        self._curv_cache: Tensor | None = None
        self._curv_quadratic: Tensor | None = None
        self._spectral: Any = None  # the quadratic part's FFT operator, built once (solvers.quadratic)
        self._chebyshev: dict = {}  # its Chebyshev operators by degree, likewise
        self._quadratic: Any = ()  # the quadratic part of E (solvers.quadratic.problem_quadratic_part)

    @property
    def is_quadratic(self) -> bool:
        return bool(getattr(self.E, "is_quadratic", False))

    def energy(self, y: Tensor) -> Tensor:
        self.counts["energy"] += 1
        with torch.no_grad():
            return self.E(y, self.x, self.c).detach()

    def grad(self, y: Tensor) -> Tensor:
        self.counts["grad"] += 1
        with torch.no_grad():
            return self.E.grad(y, self.x, self.c).detach()

    def energy_and_grad(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(energy(y), grad(y))`` from one fused evaluation (``E.energy_and_grad``, when the
        energy has it), counted as ``"energy_and_grad"``."""
        fused = getattr(self.E, "energy_and_grad", None)
        cls = type(self)
        if fused is None or cls.energy is not Problem.energy or cls.grad is not Problem.grad:
            # a subclass that evaluates differently (e.g. keeping the autograd graph) keeps its way
            return self.energy(y), self.grad(y)
        self.counts["energy_and_grad"] = self.counts.get("energy_and_grad", 0) + 1
        with torch.no_grad():
            e, g = fused(y, self.x, self.c)
        return e.detach(), g.detach()

    def curvature(self, y: Tensor) -> Tensor:
        """``[B, H, W, C, C]`` blocks ``A_i``.

        The blocks of quadratic terms do not depend on ``y``: they are computed once (the
        whole energy's when it is quadratic, else those of the quadratic terms of a sum,
        to which the other terms' blocks at ``y`` are added).
        """
        if self._curv_cache is not None:
            return self._curv_cache
        self.counts["curvature"] += 1
        E, x, c = self.E, self.x, self.c
        terms = list(getattr(E, "terms", []))
        with torch.no_grad():
            if self.is_quadratic:
                self._curv_cache = E.curvature(y, x, c).detach()
                return self._curv_cache
            if not any(bool(getattr(t, "is_quadratic", False)) for t in terms):
                return E.curvature(y, x, c).detach()
            if self._curv_quadratic is None:
                self._curv_quadratic = sum(t.curvature(y, x, c) for t in terms if t.is_quadratic).detach()
            return self._curv_quadratic + sum(t.curvature(y, x, c) for t in terms if not t.is_quadratic).detach()


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
    :meth:`solve`. ``ec.solve(E, x, c, method=name, **options)`` does both.
    """

    name: ClassVar[str] = "solver"
    #: True when every step can only lower the energy (coordinate descent, line searches).
    monotone: ClassVar[bool] = False

    def check(self, problem: Problem, y0: Tensor) -> None:
        """Raise ``ValueError`` when the method cannot handle this energy (before any work)."""

    def init_state(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor) -> Any:
        return None

    def start_operator(self, problem: Problem) -> Any:
        """The operator of ``y0="quadratic"`` (:func:`~energycrf.solvers.quadratic.quadratic_start`):
        ``None``, the FFT operator, unless the method has one of its own."""
        return None

    def step(self, problem: Problem, y: Tensor, e: Tensor, g: Tensor, state: Any) -> StepOutput:
        raise NotImplementedError

    # -- the loop -----------------------------------------------------------------------
    def solve(
        self,
        E: Any,
        x: Tensor,
        c: Tensor | None = None,
        *,
        y0: Tensor | str | None = None,
        max_iters: int = 500,
        tol: float | None = None,
        gtol: float | None = None,
        on_diverge: str = "warn",
        rise_tol: float = 1.0,
        blowup: float = 1e6,
        well_posed: str = "ignore",
        progress: bool = False,
        callback: Callable[[int, Tensor, Tensor], None] | None = None,
    ) -> SolveResult:
        """Minimise ``E(., x, c)`` from ``y0`` (default ``x``).

        Args:
            y0: the start: ``None`` (``x``), a tensor shaped like ``x``, or ``"quadratic"``:
                the minimiser of the energy's quadratic part (Unary + Pairwise), from its
                FFT inverse, or from the Chebyshev polynomial of a method with
                ``precondition="chebyshev"`` (:func:`energycrf.solvers.quadratic.quadratic_start`; counted in
                the wall time; ``energies[0]`` is the energy there).
            max_iters: iterations of this method (a sweep over all colour classes for
                coordinate descent, one line search for L-BFGS, ...).
            tol: a sample converges when ``|E_t - E_{t-1}| / max(|E_t|, |E_{t-1}|) <= tol``
                after an accepted step. Default ``max(1e-9, 10 * eps)`` of the dtype.
            gtol: ... or when ``||grad E(y_t)|| <= gtol * ||grad E(y_0)||``. Default
                ``1e-5`` (float32) / ``1e-8`` (float64).
            on_diverge: ``"warn"`` (a :class:`DivergenceWarning`), ``"raise"``
                (:class:`DivergenceError`) or ``"ignore"``. A sample diverges when a value
                becomes non-finite, when ``E_t - min_s E_s > rise_tol * scale`` (scale:
                ``|min E| + |E_0 - min E|``), or when ``max |y| > blowup * (1 + max|x| + max|y0|)``
                (an energy unbounded below).
            well_posed: passed to ``E.check_well_posed(c, on_fail=...)`` first when the
                energy has that method: ``"warn"``, ``"raise"`` or ``"ignore"``.
            progress: show a tqdm bar.
            callback: ``callback(t, y, energies)`` after every iteration (its time is not
                counted in :attr:`SolveResult.times`). ``y`` is the solver's own iterate, not a
                copy: read or clone it, do not modify it in place (L-BFGS forms its next
                curvature pair from it).
        """
        problem = Problem(E, x, c)
        if on_diverge not in _ON_DIVERGE:
            raise ValueError(f"on_diverge: expected one of {_ON_DIVERGE}, got {on_diverge!r}")
        if not isinstance(max_iters, int) or isinstance(max_iters, bool) or max_iters < 0:
            raise ValueError(f"max_iters: expected a non-negative int, got {max_iters!r}")
        start = check_start(y0, x)
        if y0 is None or start is not None:
            y0 = x.detach().clone()
        elif y0.dtype != x.dtype or y0.device != x.device:
            raise ValueError(
                f"y0: expected dtype {x.dtype} on {x.device} like x, got {y0.dtype} on {y0.device}"
            )
        eps = torch.finfo(x.dtype).eps
        tol = max(1e-9, 10 * eps) if tol is None else float(tol)
        gtol = (1e-5 if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-8) if gtol is None else float(gtol)
        if not (tol >= 0 and gtol >= 0):  # NaN fails too
            raise ValueError(f"tol, gtol: expected non-negative numbers, got tol={tol}, gtol={gtol}")
        check_divergence_limits(rise_tol, blowup)
        if well_posed not in ("warn", "raise", "ignore"):
            raise ValueError(f"well_posed: expected 'warn', 'raise' or 'ignore', got {well_posed!r}")
        if well_posed != "ignore" and hasattr(E, "check_well_posed"):
            E.check_well_posed(c, on_fail=well_posed)
        self.check(problem, y0)

        t_start = time.perf_counter()
        if start == "quadratic":  # timed: it is part of the method
            from .quadratic import quadratic_start

            y0 = y = quadratic_start(problem, self.start_operator(problem))  # a new tensor, the solver's own
        else:
            y = y0.detach().clone()
        e, g = problem.energy_and_grad(y)
        gn = sample_norm(g)
        # the per-sample bookkeeping below runs on the host in float64: one transfer per iteration
        e_np, gn_np = _host(e, gn)
        if not np.isfinite(e_np).all() or (not np.isfinite(gn_np).all() and not bool(torch.isfinite(_max_abs(g)).all())):
            raise ValueError("y0: the energy or its gradient is not finite at the starting point")
        B = y.shape[0]
        dev = y.device

        # a computed start is part of the run: its row is stamped when it is known
        t_hist = [time.perf_counter() - t_start if start is not None else 0.0]
        e_hist, g_hist = [e_np], [gn_np]
        active = np.ones(B, dtype=bool)
        status = ["max_iters"] * B
        reason = [f"reached max_iters={max_iters}"] * B
        iters = np.zeros(B, dtype=np.int64)
        e0, e_min, g0n = e_np, e_np.copy(), gn_np
        tiny = torch.finfo(e.dtype).tiny
        lim = None  # the blow-up limit: computed once some max|y| passes blowup, its lower bound
        no_sample = np.zeros(B, dtype=bool)

        def stop(mask: np.ndarray, st: str, why: str, it: int) -> None:
            for b in np.flatnonzero(mask):
                status[b], reason[b] = st, why
                iters[b] = it

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=max_iters, desc=self.name, leave=False)

        state = self.init_state(problem, y, e, g)
        it, t_callback = 0, 0.0
        for it in range(1, max_iters + 1):
            out = self.step(problem, y, e, g, state)
            y_new, e_new = out.y, out.energy
            g_new = out.grad if out.grad is not None else problem.grad(y_new)
            # energy, gradient norm and max |y| (NaN/inf where any entry is)
            at_new = _host(e_new, sample_norm(g_new), _max_abs(y_new)) if out.host is None else out.host
            e_new_np, gn_new_np, y_max = at_new
            acc = True if out.accepted is None else _host_mask(out.accepted)
            own_div = no_sample if out.diverged is None else _host_mask(out.diverged)
            done = no_sample if out.done is None else _host_mask(out.done)

            with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf are judged below, not warned about
                finite = np.isfinite(at_new).all(0)
                if lim is None and (y_max > blowup).any():
                    lim = blowup * (1.0 + _host(_max_abs(x.detach()), _max_abs(y0.detach())).sum(0))
                runaway = no_sample if lim is None else finite & (y_max > lim)
                scale = np.abs(e_min) + np.abs(e0 - e_min) + eps**0.5
                rise = finite & (e_new_np - e_min > rise_tol * scale)
                div = active & (~finite | runaway | rise | own_div)
                ok = active & ~div
                rel = np.abs(e_np - e_new_np) / np.maximum(np.maximum(np.abs(e_np), np.abs(e_new_np)), tiny)
                by_e = acc & (rel <= tol)
                by_g = gn_new_np <= gtol * g0n
            conv = ok & (by_e | by_g | done)
            stalled = no_sample if out.stalled is None else ok & ~conv & _host_mask(out.stalled)
            ended = div | conv | stalled
            if ended.any():  # the per-sample reasons (rare: at most once per sample)
                stop(active & ~finite, "diverged", "a value became non-finite (NaN or inf)", it)
                stop(active & finite & runaway, "diverged",
                     "the iterate ran away (|y| grew past the blow-up limit): the energy looks unbounded below", it)
                stop(active & finite & ~runaway & rise, "diverged",
                     f"the energy rose by more than rise_tol={rise_tol} times its scale", it)
                stop(active & finite & ~runaway & ~rise & own_div, "diverged", out.diverge_reason, it)
                stop(conv & done, "converged", "solved exactly", it)
                stop(conv & ~done & by_g, "converged", f"relative gradient norm <= gtol={gtol:g}", it)
                stop(conv & ~done & ~by_g, "converged", f"relative energy change <= tol={tol:g}", it)
                stop(stalled, "stalled", out.stall_reason, it)
                active = active & ~ended

            if ok.all():
                y, g, e = y_new, g_new, e_new
                e_np, gn_np = e_new_np, gn_new_np
            else:
                ok_t = _device_mask(ok, y)
                m4 = _bcast(ok_t, y)
                y = torch.where(m4, y_new, y)
                g = torch.where(m4, g_new, g)
                e = torch.where(ok_t, e_new, e)
                e_np, gn_np = np.where(ok, e_new_np, e_np), np.where(ok, gn_new_np, gn_np)
            e_min = np.minimum(e_min, e_np)

            e_hist.append(e_np)
            g_hist.append(gn_np)
            t_hist.append(time.perf_counter() - t_start - t_callback)
            if callback is not None:
                t_cb = time.perf_counter()
                callback(it, y, e)
                t_callback += time.perf_counter() - t_cb
            if bar is not None:
                bar.update(1)
                bar.set_postfix(E=f"{float(e_np.sum()):.6g}", active=int(active.sum()))
            if not active.any():
                break
        if bar is not None:
            bar.close()
        iters[active] = it

        wall = time.perf_counter() - t_start - t_callback
        res = SolveResult(
            y=y,
            energies=torch.from_numpy(np.stack(e_hist)).to(dtype=e.dtype, device=dev),
            grad_norms=torch.from_numpy(np.stack(g_hist)).to(dtype=e.dtype, device=dev),
            times=torch.tensor(t_hist, dtype=torch.float64),
            iterations=torch.from_numpy(iters),
            converged=torch.tensor([s == "converged" for s in status], dtype=torch.bool),
            status=status,
            reason=reason,
            method=self.name,
            wall_time=wall,
            evaluations=dict(problem.counts),
        )
        report_outcome(res, on_diverge)
        return res


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
