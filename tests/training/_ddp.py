"""Bounded multi-process launchers for the distributed tests: a hang fails the test, it never
hangs the test run.

:func:`spawn` starts ``fn(rank, *args)`` in ``nprocs`` spawned processes (``torch.multiprocessing``,
as ``mp.spawn``) and waits at most ``timeout`` seconds; past it every process still alive is
killed and the test fails. :func:`free_port` gives an unused local TCP port (127.0.0.1 only).
"""

from __future__ import annotations

import os
import signal
import socket
import time

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, args: tuple, nprocs: int, timeout: float = 60.0) -> None:
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=0.2):
            if time.monotonic() > deadline:
                alive = [p.pid for p in ctx.processes if p.is_alive()]
                raise TimeoutError(f"processes {alive} still running after {timeout:.0f} s (a deadlock?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
