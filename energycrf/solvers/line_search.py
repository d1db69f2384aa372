r"""The backtracking Armijo line search, one for every method that needs one.

Along a direction :math:`d` from :math:`y` (gradient :math:`g`, slope :math:`g^\top d < 0`)
each sample looks for a step :math:`\alpha` with sufficient decrease,

.. math::  E(y + \alpha d) \le E(y) + c_1 \alpha \, g^\top d ,

starting from :math:`\alpha = 1` (or a given first step) and backtracking on failure either
by a fixed factor, :math:`\alpha \leftarrow \text{shrink}\cdot\alpha` (gradient descent), or
to the minimiser of the quadratic through :math:`E(y)`, the slope and
:math:`E(y + \alpha d)`, kept in :math:`[0.1\alpha, 0.5\alpha]` (L-BFGS; half the step where
there is no positive curvature, a tenth where the value is not finite).

The per-sample decisions run on the host in float64: each evaluation's ``[B]`` energies
cross in one transfer (the first trial's with the driver's scalars of its point, handed on
as :attr:`StepOutput.host <energycrf.solvers.base.StepOutput>`), and numpy tests and picks
the steps. The first trial is one fused energy-and-gradient evaluation
(``Problem.energy_and_grad``) when it usually passes; backtracking trials evaluate the
energy alone, and the gradient is evaluated once at the accepted point of the samples that
needed them (:func:`accepted_point`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import StepOutput, sample_norm
from .host import _bcast, _device_mask, _device_values, _host, _max_abs

__all__ = ["LineSearch", "armijo_backtracking", "accepted_point"]


def _col(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def accepted_point(problem: Any, y: Tensor, e: Tensor, g: Tensor, y_try: Tensor, e_try: Tensor,
                   g_try: Tensor, first_ok: np.ndarray, ok: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, E, grad E)`` after a backtracking line search whose first trial was one fused
    evaluation (``g_try`` at the first trial): the trial where it passed (host mask ``ok``), else
    the old point. Samples that passed the first trial (``first_ok``) keep its gradient; those
    that passed after backtracking get one ``grad`` at the accepted point; rejected ones keep ``g``."""
    if first_ok.all():
        return y_try, e_try, g_try
    ok_t = _device_mask(ok, y)
    y_new, e_new = torch.where(_bcast(ok_t, y), y_try, y), torch.where(ok_t, e_try, e)
    g_new = torch.where(_bcast(_device_mask(first_ok, y), y), g_try, g)
    late = ok & ~first_ok
    if late.any():
        g_new = torch.where(_bcast(_device_mask(late, y), y), problem.grad(y_new), g_new)
    return y_new, e_new, g_new


@dataclass
class LineSearch:
    """The outcome of :func:`armijo_backtracking`, per sample.

    Attributes:
        y, energy, grad: the accepted point ``y + alpha d`` with ``E`` and ``grad E`` there; the
            old point where no trial passed.
        step: ``alpha``, the last step tried (the accepted one where ``ok``), host float64 ``[B]``.
        ok: the Armijo condition holds at ``step`` (host bool ``[B]``).
        first_ok: it held at the first trial.
        host: float64 ``[3, B]`` energy, gradient norm and ``max |y|`` of the returned point when
            every sample passed a fused first trial, else ``None``.
        roundoff: the first trial's predicted decrease ``-c alpha_0 g^T d`` (any ``c <= 1``) is
            below round-off of ``E``: a failed search there is a stop, not a stall.
    """

    y: Tensor
    energy: Tensor
    grad: Tensor
    step: np.ndarray
    ok: np.ndarray
    first_ok: np.ndarray
    host: np.ndarray | None
    roundoff: np.ndarray

    def step_output(self, stall_reason: str) -> StepOutput:
        """The :class:`~energycrf.solvers.base.StepOutput` of a step that is this search: samples
        without an Armijo step are rejected and stalled, unless no decrease was there to find."""
        if self.host is not None:  # the usual case: every unit step accepted, its scalars already here
            return StepOutput(y=self.y, energy=self.energy, grad=self.grad, host=self.host)
        return StepOutput(y=self.y, energy=self.energy, grad=self.grad, accepted=self.ok | self.roundoff,
                          stalled=~self.ok & ~self.roundoff, stall_reason=stall_reason)


def _armijo(e_try: np.ndarray, e: np.ndarray, slope: np.ndarray, alpha: np.ndarray, c1: float) -> np.ndarray:
    """``E(y + alpha d) <= E(y) + c1 alpha g^T d`` per sample (NaN fails)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return e_try <= e + c1 * alpha * slope


def _backtracked(alpha: np.ndarray, e_try: np.ndarray, e: np.ndarray, slope: np.ndarray,
                 shrink: float | None) -> np.ndarray:
    """The next trial step after a failed one: ``shrink * alpha``, or (``shrink`` None) the
    minimiser of the quadratic through ``E(y)``, slope ``g^T d`` and ``E(y + alpha d)``, kept in
    ``[0.1, 0.5] alpha``."""
    if shrink is not None:
        return alpha * shrink
    with np.errstate(all="ignore"):
        denom = 2.0 * (e_try - e - slope * alpha)
        a_q = np.where(denom > 0, -slope * alpha * alpha / np.where(denom > 0, denom, 1.0), 0.5 * alpha)
    a_q = np.where(np.isfinite(a_q), a_q, 0.1 * alpha)
    return np.clip(a_q, 0.1 * alpha, 0.5 * alpha)


def armijo_backtracking(problem: Any, y: Tensor, e: Tensor, g: Tensor, d: Tensor, *, energy: np.ndarray,
                        slope: np.ndarray, sign: float = 1.0, step: np.ndarray | None = None, c1: float,
                        max_backtracks: int, shrink: float | None = None, fused: bool = True) -> LineSearch:
    """Per-sample backtracking Armijo search from ``y`` along ``sign * d``.

    Args:
        problem: the :class:`~energycrf.solvers.base.Problem` (``energy``, ``grad``,
            ``energy_and_grad``).
        y, e, g: the point, its energies ``[B]`` and gradient.
        d: the direction (up to ``sign``): the trial points are ``y + sign * alpha * d``, so a
            caller with ``-d`` at hand need not form it.
        energy, slope: host float64 ``[B]``: ``E(y)`` and ``g^T (sign d)``, which must be negative.
        step: the first trial ``alpha`` per sample (host ``[B]``); ``None``: ``1`` (one pass fewer).
        c1: the Armijo constant.
        max_backtracks: trials after the first; a sample still failing then is left at ``y``.
        shrink: the backtracking factor; ``None``: the safeguarded quadratic interpolation.
        fused: evaluate the gradient with the first trial's energy (it is ready when the trial
            passes); else energies alone, and one gradient at the accepted point.

    Returns:
        :class:`LineSearch`. Evaluations: one per trial (the first fused when ``fused``), plus one
        ``grad`` for the samples accepted after backtracking; one transfer per evaluation.
    """
    alpha = np.ones_like(energy) if step is None else step
    if step is None:
        y_try = torch.add(y, d, alpha=sign)
    else:
        y_try = torch.addcmul(y, _col(_device_values(sign * alpha, y)), d)
    at_try = None
    if fused:  # the first trial usually passes: its gradient is ready, with the driver's scalars
        e_try_t, g_try = problem.energy_and_grad(y_try)
        at_try = _host(e_try_t, sample_norm(g_try), _max_abs(y_try))
        e_try = at_try[0]
    else:
        e_try_t, g_try = problem.energy(y_try), g
        (e_try,) = _host(e_try_t)
    ok = _armijo(e_try, energy, slope, alpha, c1)
    first_ok, alpha0 = ok, alpha
    for _ in range(max_backtracks):
        if ok.all():
            break
        alpha = np.where(ok, alpha, _backtracked(alpha, e_try, energy, slope, shrink))
        ok_t = _device_mask(ok, y)
        y_try = torch.where(_col(ok_t), y_try, y + _col(_device_values(sign * alpha, y)) * d)
        e_try_t = torch.where(ok_t, e_try_t, problem.energy(y_try))
        (e_try,) = _host(e_try_t)
        ok = _armijo(e_try, energy, slope, alpha, c1)
    with np.errstate(invalid="ignore", over="ignore"):
        roundoff = (-alpha0 * slope) <= 16 * torch.finfo(y.dtype).eps * np.abs(energy)
    if fused and first_ok.all():
        return LineSearch(y_try, e_try_t, g_try, alpha, ok, first_ok, at_try, roundoff)
    passed_fused = first_ok if fused else np.zeros_like(first_ok)  # which samples hold their trial's gradient
    y_new, e_new, g_new = accepted_point(problem, y, e, g, y_try, e_try_t, g_try, passed_fused, ok)
    return LineSearch(y_new, e_new, g_new, alpha, ok, first_ok, None, roundoff)
