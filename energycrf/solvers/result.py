"""What a solver run returns, and how it reports divergence.

:class:`SolveResult` holds the solution and the full history of one run. Every
per-sample quantity has a leading batch axis ``B``; the history has ``T + 1`` rows (the
start, then one row per iteration of the driver loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "SolveResult",
    "SolverWarning",
    "DivergenceWarning",
    "DivergenceError",
    "STATUSES",
]

#: Per-sample outcomes, in the order :attr:`SolveResult.status` may report them.
#:
#: - ``"converged"``: relative energy change or relative gradient norm fell below tolerance;
#: - ``"max_iters"``: the iteration budget ran out first;
#: - ``"diverged"``: the energy rose past the divergence tolerance, a value became
#:   non-finite, or the iterate ran away (an energy unbounded below);
#: - ``"stalled"``: the method could not find a step that lowers the energy
#:   (line search or damping exhausted) before meeting the tolerance.
STATUSES = ("converged", "max_iters", "diverged", "stalled")


class SolverWarning(UserWarning):
    """A solver finished without converging for a reason the user should see."""


class DivergenceWarning(SolverWarning, RuntimeWarning):
    """A solver run diverged (energy rising, non-finite values, or a run-away iterate)."""


class DivergenceError(RuntimeError):
    """Raised instead of :class:`DivergenceWarning` when ``on_diverge="raise"``."""


@dataclass
class SolveResult:
    """The outcome of ``ec.solve``.

    Attributes:
        y: the solution, shaped like ``x``. For a diverged sample, the last iterate whose
            values were finite and bounded.
        energies: ``Tensor[T + 1, B]``, the energy ``E(y^{(t)}, x, c)`` at the start and
            after each iteration. Samples that stopped early repeat their last value.
        grad_norms: ``Tensor[T + 1, B]``, the Euclidean norm of ``grad E`` per sample.
        times: ``Tensor[T + 1]``, wall-clock seconds since the start at each row (``0`` for
            a given start; with ``y0="quadratic"`` the seconds spent computing it).
        iterations: ``Tensor[B]`` (int64), the iteration at which each sample stopped.
        converged: ``Tensor[B]`` (bool).
        status: one entry of :data:`STATUSES` per sample.
        reason: a sentence per sample saying why it stopped.
        method: the registry name of the solver.
        wall_time: seconds for the whole run.
        evaluations: how many energy and gradient evaluations the run made.
    """

    y: Tensor
    energies: Tensor
    grad_norms: Tensor
    times: Tensor
    iterations: Tensor
    converged: Tensor
    status: list[str]
    reason: list[str]
    method: str
    wall_time: float
    evaluations: dict[str, int] = field(default_factory=dict)

    @property
    def energy(self) -> Tensor:
        """``Tensor[B]``: the energy of :attr:`y`."""
        return self.energies[-1]

    @property
    def num_iterations(self) -> int:
        """Rows of history minus one: the iterations the driver ran (the slowest sample)."""
        return self.energies.shape[0] - 1

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def diverged(self) -> Tensor:
        """``Tensor[B]`` (bool): which samples diverged."""
        return torch.tensor([s == "diverged" for s in self.status], dtype=torch.bool)

    def summary(self) -> str:
        """One line per sample: status, iterations, final energy and gradient norm."""
        lines = [f"{self.method}: {self.wall_time:.3f} s, {self.num_iterations} iterations"]
        for b, (st, why) in enumerate(zip(self.status, self.reason)):
            lines.append(
                f"  sample {b}: {st} after {int(self.iterations[b])} it, "
                f"E = {float(self.energies[-1, b]):.8g}, |grad| = {float(self.grad_norms[-1, b]):.3g} "
                f"({why})"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:  # the tensors are long; show what people look at
        return (
            f"SolveResult(method={self.method!r}, status={self.status}, "
            f"iterations={self.iterations.tolist()}, energy={self.energy.tolist()}, "
            f"wall_time={self.wall_time:.4g})"
        )
