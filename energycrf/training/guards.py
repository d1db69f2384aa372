"""Non-finite values in training: what :attr:`TrainConfig.on_nonfinite` guards.

A NaN or inf in a batch spreads through a training step: a single pixel makes the loss
NaN, the gradients NaN, and, through batch norm's batch statistics, every output of the
batch and the running statistics (then every later eval-mode output). The trainer
therefore checks, in this order, before each thing they could reach:

1. the batch (the model input ``x``, the ``target`` and the condition), before the
   forward pass: nothing has run yet;
2. the loss, before the backward pass; the running statistics the forward pass updated
   (those of the ``torch.nn`` batch / instance norm layers in training mode) are put
   back from a copy taken before it;
3. the gradients, before the optimiser step (without a float16 ``GradScaler``, which
   skips steps with inf / NaN gradients itself).

Under ``torchrun`` the ranks combine their findings first, so all stop or skip together.
``on_nonfinite="stop"`` (default) then raises ``FloatingPointError`` naming the step and
the batch; the weights, statistics, optimiser, scheduler and RNG are as before the batch.
``"skip"`` leaves them so, counts the batch and goes on with the next one.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["ON_NONFINITE", "NonFiniteGuard", "nonfinite_input", "grads_finite", "RunningStats"]

ON_NONFINITE = ("stop", "skip")


def nonfinite_input(tensors: dict[str, torch.Tensor | None]) -> tuple[str, str] | None:
    """``(what, detail)`` for the first floating tensor holding NaN or inf, else None."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            return f"input {name!r}", f"input {name!r} has {n} of {t.numel()} entries NaN or inf"
    return None


def grads_finite(params: Iterable[nn.Parameter]) -> bool:
    """Whether every gradient is finite: the total 2-norm of the gradients (NaN / inf propagate)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return True
    total = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6, one fused reduction
    norm = total(grads) if total is not None else torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return bool(torch.isfinite(norm))


class RunningStats:
    """The running statistics a training forward pass of ``modules`` updates, and copies.

    :meth:`save` copies them (a few numbers per channel), :meth:`restore` puts the copies
    back. Other buffers that a custom module changes in its forward pass are not covered.
    """

    def __init__(self, *modules: nn.Module | None):
        self.norms = [m for mod in modules if mod is not None for m in mod.modules()
                      if isinstance(m, _NormBase) and m.track_running_stats]
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def save(self) -> None:
        self._saved = [(b, b.clone()) for m in self.norms if m.training
                       for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]

    @torch.no_grad()
    def restore(self) -> None:
        for b, saved in self._saved:
            b.copy_(saved)


class NonFiniteGuard:
    """Stop or skip on a non-finite batch, loss or gradient; counts the skipped batches."""

    def __init__(self, mode: str):
        if mode not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite: expected 'stop' or 'skip', got {mode!r}")
        self.mode = mode
        self.skipped = 0
        self.last: str | None = None  # what the last skipped batch held

    def handle(self, what: str, detail: str, step: int, batches_per_epoch: int, kept: str | None = None) -> None:
        """Raise (``"stop"``) or count (``"skip"``) a bad batch: the one of step ``step + 1``.

        ``kept`` says what is as it was before the batch (default: for an input, everything;
        else the weights, running statistics and optimiser).
        """
        if self.mode == "skip":
            self.skipped += 1
            self.last = what
            return
        epoch, batch = divmod(step, batches_per_epoch)
        where = f"step {step + 1} (epoch {epoch}, batch {batch} of the epoch)"
        if what.startswith("input"):
            head = f"the batch of {where} holds non-finite values: {detail}"
            kept = kept or ("nothing ran on it: the model, its running statistics, the optimiser and the RNG are "
                            "as before")
        else:
            head = f"training diverged at {where}: {detail}"
            kept = kept or "the weights, running statistics and optimiser are as before this batch"
        raise FloatingPointError(f"{head}; {kept} (on_nonfinite='stop'; on_nonfinite='skip' skips such batches "
                                 "and counts them)")
