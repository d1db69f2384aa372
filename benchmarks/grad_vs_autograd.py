"""Analytic gradient (``E.grad``) against autograd for Unary + Pairwise + FieldOfExperts.

Usage:
    python benchmarks/grad_vs_autograd.py                 # the two shapes of the docs table
    python benchmarks/grad_vs_autograd.py --repeats 50 --shapes 8,4,64,64

Three ways to get dE/dy for the same energy, same inputs, float32 on the CPU:

- ``analytic``:        ``E.grad(y, x)`` (the terms' closed-form gradients);
- ``torch.func.grad``: ``torch.func.grad(lambda y: E(y, x).sum())(y)``;
- ``autograd.grad``:   ``torch.autograd.grad(E(y, x).sum(), y)`` with ``y.requires_grad_()``.

The energy's parameters are frozen (``requires_grad_(False)``) for all three: the benchmark
measures the gradient with respect to ``y``, the solvers' workload.

Time: wall-clock time of ``--repeats`` calls after ``--warmup`` calls, the methods
interleaved round-robin in one process so that load from other processes hits all alike;
the median and the minimum are both reported (on a shared machine the median carries the
other processes' load, the minimum is the closest to the uncontended cost).

Peak memory: each (method, shape) runs once more in a fresh subprocess that measures the
process's resident-set high-water mark over one call: it warms up, resets the kernel's
counter (``/proc/self/clear_refs`` <- 5), reads ``VmRSS``, makes the call, reads ``VmHWM``;
the difference is the extra memory the call needed at its peak (inputs excluded). glibc is
told to serve every block over 64 KiB by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so freed
buffers go back to the kernel and a warm-up cannot hide the measured call's allocations.
Python's ``tracemalloc`` does not see torch's buffers, which is why it is not used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import energycrf as ec
from machine_info import MEMORY_ENV, cpu_name, peak_extra_mib  # noqa: E402  (benchmarks/ is the script's folder)

METHODS = ("analytic", "torch.func.grad", "autograd.grad")
DEFAULT_SHAPES = ("8,4,64,64", "1,4,128,128")


def build_energy(channels: int) -> ec.Energy:
    torch.manual_seed(0)
    E = (ec.energies.Unary()
         + ec.energies.Pairwise(channels=channels)
         + ec.energies.FieldOfExperts(channels=channels, num_filters=8, kernel_size=5))
    E.requires_grad_(False)
    return E


def make_inputs(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g)
    y = x + 0.1 * torch.randn(shape, generator=g)
    return y, x


def make_call(method: str, E: ec.Energy, y: torch.Tensor, x: torch.Tensor):
    if method == "analytic":
        return lambda: E.grad(y, x)
    if method == "torch.func.grad":
        fg = torch.func.grad(lambda yy: E(yy, x).sum())
        return lambda: fg(y)
    if method == "autograd.grad":
        def call():
            yy = y.detach().requires_grad_(True)
            return torch.autograd.grad(E(yy, x).sum(), yy)[0]
        return call
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def worker(method: str, shape: tuple[int, ...], warmup: int) -> dict:
    """Runs in a fresh subprocess: peak extra resident memory of one call, in MiB."""
    E = build_energy(shape[1])
    y, x = make_inputs(shape)
    call = make_call(method, E, y, x)
    for _ in range(max(warmup, 1)):
        call()
    return {"peak_mib": peak_extra_mib(call)}


def measure_memory(method: str, shape: tuple[int, ...], warmup: int, threads: int) -> float:
    env = dict(os.environ, **MEMORY_ENV, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", method, "--shapes", ",".join(map(str, shape)),
           "--warmup", str(warmup), "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


def measure_time(shape: tuple[int, ...], repeats: int, warmup: int) -> tuple[dict, dict, dict]:
    E = build_energy(shape[1])
    y, x = make_inputs(shape)
    calls = {m: make_call(m, E, y, x) for m in METHODS}
    # Agreement of the three gradients (float32), reported next to the timings.
    ref = calls["autograd.grad"]()
    err = {m: ((calls[m]() - ref).abs().max() / ref.abs().max()).item() for m in METHODS}
    for _ in range(warmup):
        for m in METHODS:
            calls[m]()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(repeats):
        for m in METHODS:
            t0 = time.perf_counter()
            calls[m]()
            times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) for m, v in times.items()}
    best = {m: min(v) for m, v in times.items()}
    return med, best, err


def machine() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.platform()}; CPU: {cpu_name()} ({os.cpu_count()} logical cores visible); "
            f"Python {platform.python_version()}; torch {torch.__version__}; "
            f"torch threads {torch.get_num_threads()}; load average at start {load}")


def ratio(num: float, den: float, floor: float = 0.0) -> str:
    """``num / den`` as ``"2.50x"``; ``"n/a"`` when ``den <= floor`` (memory: below what RSS resolves)."""
    return "n/a" if den <= floor else f"{num / den:.2f}x"


def parse_shape(text: str) -> tuple[int, ...]:
    shape = tuple(int(v) for v in text.split(","))
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape must be B,C,H,W with positive sizes, got {text!r}")
    return shape


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", type=parse_shape, nargs="+", default=[parse_shape(s) for s in DEFAULT_SHAPES])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.worker:
        print(json.dumps(worker(args.worker, args.shapes[0], args.warmup)))
        return 0

    print(f"machine: {machine()}")
    print(f"command: python benchmarks/grad_vs_autograd.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"float32, median of {args.repeats} calls after {args.warmup} warm-up calls; "
          "peak = extra resident memory of one call (fresh process)\n")
    rows = []
    for shape in args.shapes:
        med, best, err = measure_time(shape, args.repeats, args.warmup)
        mem = {m: measure_memory(m, shape, args.warmup, args.threads) for m in METHODS}
        rows.append((shape, med, best, mem, err))

    ref = "autograd.grad"
    print("| shape | method | median time (ms) | speed-up (median) | min time (ms) | speed-up (min) "
          "| peak memory (MiB) | memory saving | max rel. diff to autograd |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for shape, med, best, mem, err in rows:
        for m in METHODS:
            print(f"| {list(shape)} | {m} | {1e3 * med[m]:.2f} | {ratio(med[ref], med[m])} "
                  f"| {1e3 * best[m]:.2f} | {ratio(best[ref], best[m])} "
                  f"| {mem[m]:.1f} | {ratio(mem[ref], mem[m], 0.05)} | {err[m]:.1e} |")
    print(f"\nspeed-up and memory saving: {ref} / method (above 1: the method is faster / leaner)\n")
    for shape, med, best, mem, _ in rows:
        ad = ("torch.func.grad", "autograd.grad")
        print(f"{list(shape)}: analytic vs the better autograd: "
              f"{ratio(min(med[a] for a in ad), med['analytic'])} faster (median), "
              f"{ratio(min(best[a] for a in ad), best['analytic'])} faster (min), "
              f"{ratio(min(mem[a] for a in ad), mem['analytic'], 0.05)} less peak memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
