"""torchrun / DistributedDataParallel helpers.

Under ``torchrun`` the environment holds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous address; :func:`init_distributed` starts the process group from it
(NCCL on GPUs, gloo on CPU) and is a no-op in a plain single process.

The tensors that :func:`all_reduce_mean` and :func:`max_over_ranks` hand to a collective are
buffers kept for the life of the process. A gloo worker thread drops its last reference to a
collective's tensors a moment after the caller has the result (and a later ``barrier`` keeps
them until it is itself dropped). If the tensor's Python object has died by then, dropping it
needs the GIL; while the interpreter exits, a thread that asks for the GIL is ended and the
process aborts ("terminate called without an active exception", SIGABRT, seen on a finished
2-process run). With the Python object alive, the thread only lowers a reference count. "Alive"
includes the interpreter's exit, which clears the module dicts that hold the buffers: each
buffer carries one reference that is never dropped (a few bytes per shape, for the process's life).
"""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "all_reduce_mean", "max_over_ranks", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _check_timeout(timeout, name: str = "timeout") -> timedelta | None:
    if timeout is None or isinstance(timeout, timedelta):
        seconds = None if timeout is None else timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(f"{name}: expected a number of seconds, a datetime.timedelta or None, "
                        f"got {type(timeout).__name__}")
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{name}: expected a positive, finite number of seconds, got {timeout!r}")
    return None if seconds is None else timedelta(seconds=seconds)


def _check_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected a torch.device or a device string such as 'cpu' or 'cuda:0', "
                         f"got {device!r} ({e})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {str(device)!r} asks for CUDA, but CUDA is not available to this torch "
                             f"({torch.__version__}); pass device='cpu' or None")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device: {str(device)!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def _env_int(name: str, default: str, minimum: int) -> int:
    """An integer from the environment variable ``name`` (torchrun sets it), checked."""
    text = os.environ.get(name, default)
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}: expected an integer >= {minimum}, got {value}")
    return value


def init_distributed(device: str | torch.device | None = None, backend: str | None = None,
                     timeout: float | timedelta | None = None) -> DistInfo:
    """Join the ``torchrun`` process group if the environment describes one.

    ``device=None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
    ``backend=None`` picks ``nccl`` for CUDA and ``gloo`` otherwise. ``timeout`` (seconds
    or a ``timedelta``; ``None``: torch's default, 30 minutes for gloo) bounds the
    rendezvous, which raises ``TimeoutError`` when the other processes do not join within
    it, and every later collective: keep it above the longest time one rank may wait for
    the others (rank 0 writing a checkpoint while the others wait in the barrier).
    """
    limit = _check_timeout(timeout)
    world = _env_int("WORLD_SIZE", "1", minimum=1)
    rank = _env_int("RANK", "0", minimum=0)
    local = _env_int("LOCAL_RANK", str(rank), minimum=0)
    if device is None:
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    device = _check_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        be = backend or ("nccl" if device.type == "cuda" else "gloo")
        try:
            dist.init_process_group(backend=be, rank=rank, world_size=world,
                                    **({} if limit is None else {"timeout": limit}))
        except dist.DistError as e:
            if "timed out" not in str(e).lower():
                raise
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            waited = "torch's default timeout" if limit is None else f"timeout={limit.total_seconds():g} s"
            raise TimeoutError(f"init_distributed: the process group of WORLD_SIZE={world} did not form at {where} "
                               f"within {waited} (this process is RANK={rank}): are the other processes started "
                               f"and is the address right? ({e})") from e
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# (numel, dtype, device) -> the buffer its collectives use; never freed (see the module docstring)
_BUFFERS: dict[tuple[int, torch.dtype, str], torch.Tensor] = {}


def _buffer(numel: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    key = (numel, dtype, str(torch.device(device)))
    if key not in _BUFFERS:
        buf = torch.empty(numel, dtype=dtype, device=device)
        # one reference that nothing drops: the interpreter's exit clears this module's dict, and a gloo
        # thread still holding the last collective's work would then own the Python object (see above)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(buf))
        _BUFFERS[key] = buf
    return _BUFFERS[key]


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over processes (identity without a process group)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    buf = _buffer(value.numel(), value.dtype, value.device)
    buf.copy_(value.detach().reshape(-1))
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf / dist.get_world_size()).reshape(value.shape)


def max_over_ranks(values: list[int], device: torch.device) -> list[int]:
    """The element-wise maximum of ``values`` over processes, in one all-reduce (``values``
    itself without a process group): what the ranks agree on before a step."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return list(values)
    buf = _buffer(len(values), torch.int64, device)
    buf.copy_(torch.tensor(values, dtype=torch.int64))
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return buf.tolist()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
