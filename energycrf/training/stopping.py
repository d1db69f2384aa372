"""Stopping a run cleanly, in one process or in many.

A process has two local reasons to stop: SIGINT / SIGTERM received (:class:`StopRequest`
turns them into a flag while :meth:`Trainer.fit` runs), or, for a ``torchrun`` worker,
the ``torchrun`` agent that started it has gone (killed with SIGKILL, which it cannot
forward to its workers): its parent process changed. The check is a ``getppid`` call per
step. (``prctl(PR_SET_PDEATHSIG)`` is not used: Linux sends that signal again each time
the orphan is handed from one exiting thread of the agent to the next, and a late copy
would end the process with the default action once ``fit`` has restored the handlers.)

Several processes must stop after the same step: one that stops alone leaves the others
waiting in the next gradient all-reduce while it waits in the checkpoint barrier. The
trainer therefore combines the local flags of all ranks before every step
(:func:`~energycrf.training.distributed.max_over_ranks`) and all stop when one asks.
"""

from __future__ import annotations

import os
import signal

__all__ = ["StopRequest", "under_torchrun", "launcher_gone"]

# the parent when this module was first imported: for a torchrun worker, the torchrun agent
_PARENT = os.getppid()


def under_torchrun() -> bool:
    """Whether this process is a worker started by ``torchrun`` (torchelastic)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def launcher_gone() -> bool:
    """A ``torchrun`` worker whose agent has exited (it was re-parented); False otherwise."""
    return under_torchrun() and os.getppid() != _PARENT


class StopRequest:
    """While entered, SIGINT / SIGTERM set :attr:`signalled` instead of ending the process.

    :meth:`local` is True once a signal came or the ``torchrun`` agent has gone. Signal
    handlers can only be installed from the main thread; elsewhere only the agent check
    works.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signalled = False
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        self.signalled = True

    def __enter__(self) -> "StopRequest":
        try:
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not in the main thread
            pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old = {}

    def local(self) -> bool:
        return self.signalled or launcher_gone()
