"""Helpers shared by the benchmark scripts here: the CPU's model name (for the machine line every
benchmark prints), interleaved median timings, and peak extra memory in a fresh process."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path


def cpu_name() -> str:
    """``model name`` from ``/proc/cpuinfo``, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


#: Environment of a memory-measuring subprocess: glibc serves every block over 64 KiB with
#: ``mmap``, so freed buffers go back to the kernel and a warm-up cannot hide the measured
#: call's allocations in its free lists.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def status_kib(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    import re

    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def peak_extra_mib(call) -> float:
    """Runs ``call()`` once and returns the extra resident memory it needed at its peak, in MiB.

    Python's ``tracemalloc`` does not see torch's buffers and torch has no peak counter for
    the CPU, so this resets the kernel's high-water mark (``/proc/self/clear_refs`` <- 5),
    reads ``VmRSS``, calls, and reads ``VmHWM`` (Linux). Run it in a fresh process started
    with :data:`MEMORY_ENV`, after a warm-up call; inputs made before it are not counted.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current VmRSS
    before = status_kib("VmRSS")
    out = call()
    peak = status_kib("VmHWM")
    del out
    return (peak - before) / 1024


def under(patch, f):
    """``f`` run inside the context manager ``patch()``: the peer of ``f`` in an A/B timing
    (``patch`` swaps in the code being compared against, e.g. a ``mock.patch.object``)."""
    def run():
        with patch():
            return f()
    return run


def median_ms(fns, rounds):
    """Interleaved rounds of each function (order rotated each round) -> median milliseconds."""
    times = [[] for _ in fns]
    for f in fns:  # warm-up
        f()
    for r in range(rounds):
        order = list(range(len(fns)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            t = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t)
    return [1e3 * statistics.median(t) for t in times]
