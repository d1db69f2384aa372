"""Benchmark: energycrf's inference solvers against scipy L-BFGS-B and torch.optim.LBFGS.

Two problems, one run each, every method on the same energy and the same analytic gradient:

1. ``camera``: the skimage ``camera`` photograph (512 x 512, grayscale in [0, 1]) with
   Gaussian noise sigma = 25/255 (seed 0), energy Unary + Pairwise + FieldOfExperts (C = 1,
   the paper's ReLU expert, 8 filters 5 x 5, seeded);
2. ``latent``: a ``[4, 4, 64, 64]`` batch, four 128 x 128 grayscale skimage photographs
   folded into 4 channels by space-to-depth (``pixel_unshuffle``, factor 2) plus noise
   sigma = 25/255, energy Unary + Pairwise + FieldOfExperts with ``channels=4``.

For each method: wall time and iterations until the batch's total energy is within a
relative gap of 1e-6 of the best energy any method found. Every iterate is kept (outside
the timed region) and its energy re-evaluated in float64, so float32 runs are judged on the
float64 energy. scipy's L-BFGS-B is timed per accepted iterate (its callback);
``torch.optim.LBFGS`` (strong-Wolfe line search, one ``step`` with ``max_iter`` iterations,
its natural use) is judged on every closure evaluation, which can only flatter it. It runs
in float64 and float32, each with the closure calling ``E(y, x)`` and ``E.grad(y, x)``
and with one fused ``E.energy_and_grad(y, x)`` (what a user of that method would write).

After the single runs, ``--rounds`` interleaved rounds time the fast methods again (each
once per round, the order rotated every round, each stopped where its single run reached
the gap): medians and minima of the time to the gap, and the fastest energycrf method of
each dtype against each peer of that dtype as ratios of medians and of minima.

Then each run that reached the gap runs again in a fresh process, up to the end of the
iteration in which it got there and without copies of its iterates, for its peak extra
resident memory (inputs excluded, after a warm-up run; ``machine_info.peak_extra_mib``,
Linux); ``--no-memory`` skips it.

energycrf's L-BFGS (FFT preconditioner) runs from ``x`` like the peers, and from
``y0="quadratic"``, the minimiser of the energy's quadratic part (computed inside the timed
run): the peers start at ``x``, as a user of them would.

    python benchmarks/solvers_benchmark.py                 # both problems, ~5 min on 1 thread
    python benchmarks/solvers_benchmark.py --size 128 --threads 2 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import energycrf as ec
from energycrf.solvers.base import Problem
from energycrf.apps.compare_solvers import default_energy, noisy_photograph
from energycrf.solvers.start import quadratic_start
from machine_info import MEMORY_ENV, cpu_name, peak_extra_mib  # benchmarks/ is the script's folder

TARGET = 1e-6


def machine() -> str:
    return f"{cpu_name()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, {platform.python_version()}"


def latent_batch(seed: int = 0, sigma: float = 25.0) -> torch.Tensor:
    """``[4, 4, 64, 64]``: four grayscale photographs, space-to-depth, plus noise."""
    import torch.nn.functional as F

    imgs = []
    for k, name in enumerate(("camera", "astronaut", "coffee", "chelsea")):
        _, clean = noisy_photograph(name, 128, 0.0, seed + k)
        imgs.append(clean)
    z = F.pixel_unshuffle(torch.cat(imgs), 2)  # [4, 4, 64, 64]
    g = torch.Generator().manual_seed(seed)
    return z + (sigma / 255.0) * torch.randn(z.shape, generator=g, dtype=z.dtype)


def fastest_solve(E, x, **options):
    """energycrf's fastest solve here: L-BFGS with the Chebyshev preconditioner from
    ``y0="quadratic"``, one iteration (which reaches the gap on both problems)."""
    options = {"precondition": "chebyshev", **options}
    return ec.solve(E, x, method="lbfgs", y0="quadratic", max_iters=1, gtol=0.0,
                    tol=1e-13 if x.dtype == torch.float64 else 1e-7, **options)


def run_energycrf(E, x, method, dtype, max_iters, y0=None, keep=True, **options):
    """``(iterates, times, evaluations, iterations)``: the start and every iterate, their times,
    the evaluation counts, and the solver iteration of each iterate (here its index).
    ``keep=False``: no iterate is copied (the memory measurement); returns ``None``."""
    Ed, xd = copy.deepcopy(E).to(dtype), x.to(dtype)
    iterates = []
    res = ec.solve(Ed, xd, method=method, y0=y0, max_iters=max_iters, tol=1e-13 if dtype == torch.float64 else 1e-7,
                   gtol=0.0, on_diverge="warn", callback=(lambda t, y, e: iterates.append(y.clone())) if keep else None,
                   **options)
    if not keep:
        return None
    # the start's iterate, recomputed after the timed run (which times its own), so that it does
    # not warm the allocator and caches for the solve; by the solver's own operator
    if y0 is None:
        start = xd.clone()
    else:
        problem = Problem(Ed, xd)
        start = quadratic_start(problem, ec.solvers.get_solver(method, **options).start_operator(problem))
    iterates.insert(0, start)
    return iterates, res.times.tolist(), res.evaluations, list(range(len(iterates)))


def run_scipy(E, x, max_iters, keep=True):
    iterates = [x.to(torch.float64).clone()] if keep else None
    res = ec.solve(E, x.to(torch.float64), method="scipy_lbfgs", max_iters=max_iters, tol=1e-13, gtol=0.0,
                   callback=(lambda t, y, e: iterates.append(y.clone())) if keep else None)
    return (iterates, res.times.tolist(), res.evaluations, list(range(len(iterates)))) if keep else None


def run_torch_lbfgs(E, x, dtype, max_iters, fused=False, keep=True, max_evals=None):
    """``torch.optim.LBFGS`` as a user would run it: one ``step`` call, strong Wolfe.

    The closure calls ``E(y, x)`` and ``E.grad(y, x)``; with ``fused=True`` it calls
    ``E.energy_and_grad(y, x)`` once (the same values from one evaluation). Every closure call
    is an iterate; ``iterations`` gives the L-BFGS iteration each belongs to (0: the first
    call). ``keep=False``: no iterate is copied (the memory measurement); returns ``None``.
    ``max_evals``: closure calls allowed (``max_eval``; default ``2 max_iters``)."""
    Ed, xd = copy.deepcopy(E).to(dtype), x.to(dtype)
    p = xd.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([p], lr=1.0, max_iter=max_iters, max_eval=max_evals or 2 * max_iters, history_size=10,
                            line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)
    iterates, times, spent, iterations = ([xd.clone()] if keep else None), [0.0], [0.0], [0]
    t0 = time.perf_counter()

    def closure():
        with torch.no_grad():
            if fused:
                e, p.grad = Ed.energy_and_grad(p.detach(), xd)
                e = e.sum()
            else:
                e = Ed(p.detach(), xd).sum()
                p.grad = Ed.grad(p.detach(), xd)
        if not keep:
            return e
        t1 = time.perf_counter()
        iterates.append(p.detach().clone())  # every evaluation: flatters the peer
        iterations.append(opt.state[p].get("n_iter", 0))
        times.append(t1 - t0 - spent[0])
        spent[0] += time.perf_counter() - t1
        return e

    opt.step(closure)
    if not keep:
        return None
    n = len(iterates) - 1
    return iterates, times, ({"energy_and_grad": n} if fused else {"energy": n, "grad": n}), iterations


def evaluate(E64, x64, iterates):
    with torch.no_grad():
        return [float(E64(y.to(torch.float64), x64).sum()) for y in iterates]


def first_hit(gaps, times):
    for k, (g, t) in enumerate(zip(gaps, times)):
        if g <= TARGET:
            return k, t
    return None, None


def methods(E, x, cd_iters: int, keep: bool = True):
    """The benchmarked runs: ``(name, kind, run(max_iters), dtype, timed in the interleaved rounds)``.
    ``keep=False`` (the memory measurement): the runs copy no iterate and return ``None``.
    ``n`` is ``max_iters``: for ``torch.optim.LBFGS`` ``max_iter``, with ``max_eval = 2 n`` when
    timed and, when measured, a ``max_eval`` that does not bind (it runs ``n`` iterations).
    """
    f64, f32 = torch.float64, torch.float32
    evals = (lambda n: None) if keep else (lambda n: 25 * n + 1)  # noqa: E731  (25: torch's line-search limit)
    return [
        ("energycrf lbfgs (chebyshev, quadratic start)", "energycrf", lambda n: run_energycrf(E, x, "lbfgs", f64, n, y0="quadratic", precondition="chebyshev", keep=keep), "float64", True),
        ("energycrf lbfgs (fft, quadratic start)", "energycrf", lambda n: run_energycrf(E, x, "lbfgs", f64, n, y0="quadratic", precondition="fft", keep=keep), "float64", True),
        ("energycrf lbfgs (fft precond.)", "energycrf", lambda n: run_energycrf(E, x, "lbfgs", f64, n, precondition="fft", keep=keep), "float64", True),
        ("energycrf lbfgs (block precond.)", "energycrf", lambda n: run_energycrf(E, x, "lbfgs", f64, n, keep=keep), "float64", False),
        ("energycrf mean_field", "energycrf", lambda n: run_energycrf(E, x, "mean_field", f64, n, keep=keep), "float64", False),
        ("energycrf gradient_descent", "energycrf", lambda n: run_energycrf(E, x, "gradient_descent", f64, n, keep=keep), "float64", False),
        ("energycrf coordinate_descent", "energycrf", lambda n: run_energycrf(E, x, "coordinate_descent", f64, min(n, cd_iters), keep=keep), "float64", False),
        ("energycrf lbfgs (chebyshev, quadratic start)", "energycrf", lambda n: run_energycrf(E, x, "lbfgs", f32, n, y0="quadratic", precondition="chebyshev", keep=keep), "float32", True),
        ("energycrf lbfgs (fft, quadratic start)", "energycrf", lambda n: run_energycrf(E, x, "lbfgs", f32, n, y0="quadratic", precondition="fft", keep=keep), "float32", True),
        ("energycrf lbfgs (fft, quadratic start, refine=0)", "energycrf", lambda n: run_energycrf(E, x, "lbfgs", f32, n, y0="quadratic", precondition="fft", refine=0, keep=keep), "float32", True),
        ("energycrf lbfgs (fft precond.)", "energycrf", lambda n: run_energycrf(E, x, "lbfgs", f32, n, precondition="fft", keep=keep), "float32", True),
        ("energycrf mean_field", "energycrf", lambda n: run_energycrf(E, x, "mean_field", f32, n, keep=keep), "float32", False),
        ("scipy L-BFGS-B", "peer", lambda n: run_scipy(E, x, n, keep=keep), "float64", True),
        ("torch.optim.LBFGS", "peer", lambda n: run_torch_lbfgs(E, x, f64, n, keep=keep, max_evals=evals(n)), "float64", True),
        ("torch.optim.LBFGS (fused closure)", "peer", lambda n: run_torch_lbfgs(E, x, f64, n, fused=True, keep=keep, max_evals=evals(n)), "float64", True),
        ("torch.optim.LBFGS", "peer", lambda n: run_torch_lbfgs(E, x, f32, n, keep=keep, max_evals=evals(n)), "float32", True),
        ("torch.optim.LBFGS (fused closure)", "peer", lambda n: run_torch_lbfgs(E, x, f32, n, fused=True, keep=keep, max_evals=evals(n)), "float32", True),
    ]


def problem_input(problem: str, size: int):
    """``x`` and the float64 energy of a benchmark problem (``camera`` at ``size``, or ``latent``)."""
    if problem == "camera":
        x, _ = noisy_photograph("camera", size, 25.0, 0)
    elif problem == "latent":
        x = latent_batch()
    else:
        raise ValueError(f"--problems: expected camera and/or latent, got {problem!r}")
    return x, default_energy(x.shape[1], seed=0).to(torch.float64)


def measure_memory(problem: str, size: int, threads: int, index: int, budget: int, cd_iters: int) -> float:
    """Peak extra resident memory (MiB) of run ``index`` of :func:`methods` with ``budget``, in a
    fresh process: inputs made in the run's dtype first, one warm-up run, then the measured one
    (:func:`machine_info.peak_extra_mib`), without copies of the iterates."""
    env = dict(os.environ, **MEMORY_ENV, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", f"{problem},{index},{budget}",
           "--size", str(size), "--threads", str(threads), "--cd-iters", str(cd_iters)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


def memory_worker(spec: str, size: int, cd_iters: int) -> dict:
    problem, index, budget = spec.split(",")
    x, E = problem_input(problem, size)
    dtype = getattr(torch, methods(E, x, cd_iters)[int(index)][3])
    run = methods(E.to(dtype), x.to(dtype), cd_iters, keep=False)[int(index)][2]
    run(int(budget))  # warm-up: imports, kernels, FFT plans, the allocator
    return {"peak_mib": peak_extra_mib(lambda: run(int(budget)))}


def bench(problem: str, E, x, max_iters: int, cd_iters: int, rounds: int = 0, memory: dict | None = None,
          warm: bool = True):
    """``memory``: the problem's worker arguments (``problem``, ``size``, ``threads``), to measure
    each run's peak memory to the gap in a fresh process (:func:`measure_memory`); ``None``: not."""
    E64, x64 = copy.deepcopy(E).to(torch.float64), x.to(torch.float64)
    plan = methods(E, x, cd_iters)
    runs = []
    for name, kind, fn, dt, _ in plan:
        print(f"[{problem}] {name} ({dt}) ...", flush=True)
        if "coordinate_descent" not in name:  # warm-up run (allocator, FFT plans, lazy imports), discarded
            fn(max_iters)
        iterates, times, evals, iterations = fn(max_iters)
        runs.append({"method": name, "kind": kind, "dtype": dt, "energies": evaluate(E64, x64, iterates),
                     "times": times, "evaluations": evals, "iterations": iterations})
        del iterates
    best = min(min(r["energies"]) for r in runs)
    for r in runs:
        r["gaps"] = [(e - best) / abs(best) for e in r["energies"]]
        k, t = first_hit(r["gaps"], r["times"])
        r["iters_to_gap"], r["seconds_to_gap"] = k, t
        # the solver iteration during which it got there (torch.optim.LBFGS: iterates are closure calls)
        r["iteration_at_gap"] = None if k is None else r["iterations"][k]
        r["final_gap"] = r["gaps"][-1]
    peers = [r["seconds_to_gap"] for r in runs if r["kind"] == "peer" and r["seconds_to_gap"] is not None]
    best_peer = min(peers) if peers else None
    for r in runs:
        r["speedup_vs_best_peer"] = (best_peer / r["seconds_to_gap"]) if (best_peer and r["seconds_to_gap"]) else None
    if memory is not None and not Path("/proc/self/clear_refs").exists():
        print(f"[{problem}] peak memory not measured: it needs Linux's /proc/self/clear_refs", flush=True)
        memory = None
    for i, r in enumerate(runs):
        if memory is None or r["iteration_at_gap"] is None:
            continue
        print(f"[{problem}] peak memory: {r['method']} ({r['dtype']}) ...", flush=True)
        try:
            r["peak_mib"] = measure_memory(**memory, index=i, budget=max(1, r["iteration_at_gap"]), cd_iters=cd_iters)
        except subprocess.CalledProcessError as err:  # keep the timings; say why, measure no more
            tail = "\n".join((err.stderr or "").strip().splitlines()[-5:])
            print(f"[{problem}] peak memory not measured: the worker failed (exit {err.returncode}):\n{tail}", flush=True)
            memory = None
    out = {"problem": problem, "best_energy": best, "best_peer_seconds": best_peer, "runs": runs}
    if rounds:
        out["interleaved"] = interleaved(problem, plan, runs, best, E64, x64, rounds, warm)
    return out


def interleaved(problem, plan, runs, best, E64, x64, rounds, warm=True):
    """Time to the gap of the fast methods, timed in ``rounds`` rounds that run each once, in
    an order rotated every round (machine noise and cache effects fall on all alike).
    Each run gets as budget the count at which the single run above first reached the gap
    (iterations; for torch.optim.LBFGS closure calls, which bound its iterations from above,
    so it may run past the gap) and is timed at its first iterate (peers: evaluation) within
    the gap; a round whose run misses it counts as not reached.

    ``warm``: each timed run follows an untimed run of the same method, so that it starts
    from the method's own steady state, as in a loop of solves. Without it (``--cold``) a
    run starts where the previous method and the float64 re-evaluation of its iterates left
    the allocator: glibc has given their freed pages back to the OS, and the run's first
    evaluation page-faults about 2 MiB of fresh memory on the latent batch (about 500
    faults, 0.5 to 1.5 ms on this VM), a fixed cost that falls on every method but weighs
    most on the shortest."""
    chosen = [(p, r) for p, r in zip(plan, runs) if p[4] and r["iters_to_gap"] is not None]
    if not chosen:  # no fast method reached the gap: nothing to time
        return {"rounds": rounds, "rows": []}
    seconds = {i: [] for i in range(len(chosen))}
    for rnd in range(rounds):
        order = list(range(len(chosen)))
        order = order[rnd % len(order):] + order[:rnd % len(order)]
        for i in order:
            (name, _, fn, dt, _), r = chosen[i]
            if warm:
                fn(max(1, r["iters_to_gap"]))  # untimed, discarded
            iterates, times, _, _ = fn(max(1, r["iters_to_gap"]))
            gaps = [(e - best) / abs(best) for e in evaluate(E64, x64, iterates)]
            seconds[i].append(first_hit(gaps, times)[1])
        print(f"[{problem}] interleaved round {rnd + 1}/{rounds}", flush=True)
    rows = []
    for i, ((name, kind, _, dt, _), _) in enumerate(chosen):
        got = [t for t in seconds[i] if t is not None]
        rows.append({"method": name, "kind": kind, "dtype": dt, "seconds": seconds[i],
                     "median": statistics.median(got) if got else None, "min": min(got) if got else None,
                     "missed": len(seconds[i]) - len(got)})
    return {"rounds": rounds, "warm": warm, "rows": rows}


def interleaved_table(result) -> str:
    inter = result.get("interleaved")
    if not inter:
        return ""
    rows = inter["rows"]
    ours = {}  # per dtype, the energycrf method with the lowest median
    for r in rows:
        if r["kind"] == "energycrf" and r["median"] is not None:
            if r["dtype"] not in ours or r["median"] < ours[r["dtype"]]["median"]:
                ours[r["dtype"]] = r
    fastest = "; ".join(f"{d}: {r['method']}" for d, r in ours.items())
    peak = {(r["method"], r["dtype"]): r.get("peak_mib") for r in result.get("runs", [])}
    lines = [
        f"Interleaved timing, {inter['rounds']} rounds"
        f"{', each timed run after an untimed one of the same method' if inter.get('warm', True) else ', cold (no untimed run before each)'}"
        f": seconds to the gap (median / min) and the fastest "
        f"energycrf method of the same dtype ({fastest}) against each peer (ratio of medians / ratio of minima); "
        "peak memory to the gap against that method's (peer / energycrf).\n",
        "| method | dtype | seconds to gap, median | min | energycrf faster by (median / min) | memory, peer / energycrf |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = ours.get(r["dtype"])
        ratio = memory = "-"
        if r["kind"] == "peer" and ref and ref["median"] and r["median"]:
            ratio = f"**{r['median'] / ref['median']:.2f}x** / {r['min'] / ref['min']:.2f}x"
        ours_mib = peak.get((ref["method"], ref["dtype"])) if ref else None
        theirs_mib = peak.get((r["method"], r["dtype"]))
        if r["kind"] == "peer" and ours_mib and theirs_mib is not None:
            memory = f"{theirs_mib / ours_mib:.2f}x"
        med = "not reached" if r["median"] is None else f"{r['median']:.4f}"
        mn = "-" if r["min"] is None else f"{r['min']:.4f}"
        miss = f" ({r['missed']} missed)" if r["missed"] else ""
        lines.append(f"| {r['method']} | {r['dtype']} | {med}{miss} | {mn} | {ratio} | {memory} |")
    return "\n".join(lines) + "\n"


def table(result) -> str:
    lines = [
        f"Problem `{result['problem']}`: best energy {result['best_energy']:.10g}; target relative gap {TARGET:g}.\n",
        "| method | dtype | iterations to gap | seconds to gap | speed-up vs best peer | final gap "
        "| evaluations (E, grad, fused E+grad, quadratic-part H v) | peak memory to gap (MiB) |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["runs"]:
        k = "-" if r["iters_to_gap"] is None else str(r["iters_to_gap"])
        t = "not reached" if r["seconds_to_gap"] is None else f"{r['seconds_to_gap']:.3f}"
        s = "-" if r["speedup_vs_best_peer"] is None else f"{r['speedup_vs_best_peer']:.2f}x"
        c = r["evaluations"]
        ev = (f"{c.get('energy', 0)}, {c.get('grad', 0)}, {c.get('energy_and_grad', 0)}, "
              f"{c.get('quadratic_hvp', 0)}")
        mem = f"{r['peak_mib']:.1f}" if r.get("peak_mib") is not None else "-"
        lines.append(f"| {r['method']} | {r['dtype']} | {k} | {t} | {s} | {r['final_gap']:.1e} | {ev} | {mem} |")
    return "\n".join(lines) + "\n"


def figure(results, path: Path):
    """Gap against wall time per problem; below, when measured, each run's peak memory to the gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_memory = any(r.get("peak_mib") is not None for res in results for r in res["runs"])
    rows = 2 if with_memory else 1
    fig, axes = plt.subplots(rows, len(results), figsize=(7.8 * len(results), 4.3 * rows), squeeze=False)
    for ax, res in zip(axes[0], results):
        for r in res["runs"]:
            style = "-" if r["kind"] == "energycrf" else "--"
            width = 1.1 if r["dtype"] == "float32" else 1.7
            gaps = [max(g, 1e-13) for g in r["gaps"]]
            ax.plot(r["times"], gaps, style, lw=width, label=f"{r['method']} ({r['dtype']})")
        ax.axhline(TARGET, color="0.5", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlim(left=0)
        ax.set_xlabel("wall time [s]")
        ax.set_ylabel("relative energy gap")
        ax.set_title(res["problem"])
        ax.grid(True, which="both", alpha=0.25)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: the curves stay visible
    if with_memory:
        for ax, res in zip(axes[1], results):
            measured = [r for r in res["runs"] if r.get("peak_mib") is not None]
            labels = [f"{r['method']} ({r['dtype']})" for r in measured]
            colours = ["tab:blue" if r["kind"] == "energycrf" else "tab:orange" for r in measured]
            ax.barh(range(len(measured)), [r["peak_mib"] for r in measured], color=colours)
            ax.set_yticks(range(len(measured)), labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("peak extra memory to the gap [MiB]")
            ax.set_title("energycrf (blue) and peers (orange)", fontsize=9)
            ax.grid(True, axis="x", alpha=0.25)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="camera size (default 512)")
    ap.add_argument("--max-iters", type=int, default=150)
    ap.add_argument("--cd-iters", type=int, default=12, help="sweeps of coordinate descent (slow: t^2 classes)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15,
                    help="interleaved timing rounds of the fast methods after the single runs (0: none)")
    ap.add_argument("--problems", default="camera,latent")
    ap.add_argument("--out", type=Path, default=Path("/tmp/energycrf-solvers-benchmark"))
    ap.add_argument("--replot", type=Path, default=None, help="redraw the figure from a results JSON and exit")
    ap.add_argument("--cold", dest="warm", action="store_false",
                    help="interleaved rounds without the untimed run before each timed one (see interleaved())")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the peak-memory measurement (one fresh process per run that reached the gap)")
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)  # problem,index,budget
    args = ap.parse_args(argv)
    if args.memory_worker is not None:
        torch.set_num_threads(args.threads)
        print(json.dumps(memory_worker(args.memory_worker, args.size, args.cd_iters)))
        return
    if args.replot is not None:
        figure(json.loads(args.replot.read_text()), args.out / "solvers_benchmark.png")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for problem in args.problems.split(","):
        x, E = problem_input(problem, args.size)
        margin = E.check_well_posed(on_fail="raise")
        print(f"[{problem}] x {tuple(x.shape)}, convexity margin {margin:.4f}", flush=True)
        memory = {"problem": problem, "size": args.size, "threads": args.threads} if args.memory else None
        results.append(bench(f"{problem} {tuple(x.shape)}", E, x, args.max_iters, args.cd_iters, args.rounds, memory,
                             args.warm))
        print(table(results[-1]) + "\n" + interleaved_table(results[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = f"Machine: {machine()}\n\n" + "\n".join(table(r) + "\n" + interleaved_table(r) for r in results)
    (args.out / "solvers_benchmark.md").write_text(report)
    (args.out / "solvers_benchmark.json").write_text(json.dumps(results, indent=1))
    figure(results, args.out / "solvers_benchmark.png")
    print(report)
    print(f"wrote {args.out}/solvers_benchmark.{{md,json,png}}")


if __name__ == "__main__":
    main()
