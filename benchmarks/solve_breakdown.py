"""Where the time of energycrf's fastest solve goes, and the ceiling that leaves against the peer.

On the solver benchmark's problems (float32, 1 torch thread), energycrf's L-BFGS with the
Chebyshev preconditioner from ``y0="quadratic"`` reaches the 1e-6 gap in one iteration
(``solvers_benchmark.fastest_solve``). This script times that one-iteration solve with timers
wrapped around its parts (fused evaluations, the Chebyshev applications with their products
of the quadratic part, the spectral bounds, the operator's set-up, the quadratic start, the
L-BFGS step; each part's own time, its nested parts taken out, and the driver's as the rest),
and, interleaved with it, ``torch.optim.LBFGS`` with the fused closure up to the evaluation
where the benchmark saw it reach the gap (``--peer-evals``; 9 on the photograph, 8 on the
batch).

The ceiling is the ratio the peer's time would give against energycrf's two evaluations
alone, with everything else free.

glibc hands freed buffers of 128 KiB and more back to the OS until its dynamic threshold
rises, and fresh buffers then page-fault: in a fresh process the photograph's solve
alternates between about 29 and 44 ms. ``solvers_benchmark.py``, which has freed large float64
buffers by the time it times the fast methods, runs in the steady state; set the threshold to
measure in it here too (it applies to energycrf and the peer alike):

    MALLOC_MMAP_THRESHOLD_=67108864 python benchmarks/solve_breakdown.py     # ~15 s
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch

from energycrf.solvers import base as B
from energycrf.solvers import lbfgs as L
from energycrf.solvers import start as St
from energycrf.solvers.preconditioners import chebyshev as Ch
from energycrf.apps.compare_solvers import default_energy, noisy_photograph
from solvers_benchmark import fastest_solve, latent_batch, machine, run_torch_lbfgs  # noqa: E402  (benchmarks/ is the script's folder)

PARTS = [  # (owner, attribute, label): each part's own time, its nested parts' taken out
    (B.Problem, "energy_and_grad", "fused evaluations (E and grad E), start and step"),
    (Ch.ChebyshevPreconditioner, "__call__", "Chebyshev applications (2: start and step, m - 1 products each, Horner)"),
    (Ch, "chebyshev_bounds", "spectral bounds (convexity margin, curvature bound)"),
    (Ch.ChebyshevPreconditioner, "__init__", "Chebyshev set-up (coefficients, prepared Hessian operator)"),
    (Ch.ChebyshevPreconditioner, "with_degree", "Chebyshev set-up (coefficients, prepared Hessian operator)"),
    (St, "quadratic_start", "quadratic start, the rest (gradient of the quadratic terms)"),
    (L.LBFGS, "step", "L-BFGS step, the rest (direction, line search, pair)"),
]
DRIVER = "driver (the solve minus the parts above)"


class Timers:
    """Wraps the parts with timers of their own time (nested parts subtracted; removed on exit)."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self._saved = []
        self._stack = []  # time spent in nested parts, one entry per active part

    def __enter__(self):
        for owner, attr, label in PARTS:
            original = getattr(owner, attr)
            self._saved.append((owner, attr, original))

            def timed(*args, _f=original, _label=label, **kwargs):
                self._stack.append(0.0)
                t = time.perf_counter()
                try:
                    return _f(*args, **kwargs)
                finally:
                    spent = time.perf_counter() - t
                    nested = self._stack.pop()
                    self.seconds[_label] += spent - nested
                    if self._stack:
                        self._stack[-1] += spent

            setattr(owner, attr, timed)
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)
        self._saved.clear()


def breakdown(E, x, peer_evals: int, rounds: int):
    def ours():
        return fastest_solve(E, x).times[-1].item()

    def peer():
        _, times, _, _ = run_torch_lbfgs(E, x, torch.float32, peer_evals, fused=True)
        return times[peer_evals]

    ours(), peer()  # warm-up
    timers = Timers()
    solve_s, peer_s = [], []
    for r in range(rounds):
        for f in ((ours, peer) if r % 2 == 0 else (peer, ours)):
            if f is ours:
                with timers:
                    solve_s.append(f())
            else:
                peer_s.append(f())
    per = {label: 1e3 * s / rounds for label, s in timers.seconds.items()}
    per[DRIVER] = 1e3 * statistics.mean(solve_s) - sum(per.values())
    return 1e3 * statistics.median(solve_s), 1e3 * statistics.median(peer_s), per


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--size", type=int, default=512, help="camera size")
    ap.add_argument("--peer-evals", default="9,8", help="closure calls of the peer to the gap: camera,latent")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    evals = [int(n) for n in args.peer_evals.split(",")]
    print(f"Machine: {machine()}\n")
    problems = [("camera", noisy_photograph("camera", args.size, 25.0, 0)[0].float(), evals[0]),
                ("latent", latent_batch().float(), evals[1])]
    for name, x, n in problems:
        E = default_energy(x.shape[1], seed=0).to(torch.float32)
        ours, peer, per = breakdown(E, x, n, args.rounds)
        evals_ms = per[PARTS[0][2]]
        print(f"{name} {tuple(x.shape)}: one-iteration solve {ours:.2f} ms (median, timers on), "
              f"torch.optim.LBFGS with the fused closure to evaluation {n}: {peer:.2f} ms (median) -> "
              f"{peer / ours:.2f}x; with everything but the two evaluations free: {peer / evals_ms:.2f}x")
        print("| part (own time, nested parts excluded) | ms per solve (mean) |")
        print("|---|---:|")
        for label in dict.fromkeys([p[2] for p in PARTS] + [DRIVER]):
            print(f"| {label} | {per.get(label, 0.0):.3f} |")
        print()


if __name__ == "__main__":
    main()
