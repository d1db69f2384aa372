"""benchmarks/solvers_benchmark.py runs end to end on a small photograph, interleaved rounds
included (the real run is documented in docs/solvers.md)."""

from __future__ import annotations

import json
import subprocess
from unittest import mock

import pytest
import torch


def test_benchmark_runs_and_interleaved_rounds_reach_the_gap(tmp_path, load_script):
    mod = load_script("benchmarks/solvers_benchmark.py")
    mod.main(["--problems", "camera", "--size", "32", "--max-iters", "40", "--cd-iters", "2",
              "--rounds", "2", "--no-memory", "--out", str(tmp_path)])
    (result,) = json.loads((tmp_path / "solvers_benchmark.json").read_text())
    runs = {(r["method"], r["dtype"]): r for r in result["runs"]}
    for start in ("fft precond.", "fft, quadratic start", "chebyshev, quadratic start"):
        ours = runs[(f"energycrf lbfgs ({start})", "float64")]
        assert ours["iters_to_gap"] is not None and ours["final_gap"] <= mod.TARGET
    # the quadratic start's row 0 is its own iterate (not x): its gap differs from the x start's
    for start in ("fft", "chebyshev"):
        assert runs[(f"energycrf lbfgs ({start}, quadratic start)", "float64")]["gaps"][0] < runs[("energycrf lbfgs (fft precond.)", "float64")]["gaps"][0]
    rows = result["interleaved"]["rows"]
    timed = {(r["method"], r["dtype"]) for r in rows}
    # every fast method that reached the gap in its single run is timed, and reaches it again
    expected = {(m, d) for (m, d), r in runs.items() if r["iters_to_gap"] is not None
                and ("lbfgs (fft" in m or "lbfgs (chebyshev" in m or r["kind"] == "peer")}
    assert timed == expected
    for r in rows:
        assert len(r["seconds"]) == 2 and r["missed"] == 0 and r["min"] > 0
    report = (tmp_path / "solvers_benchmark.md").read_text()
    assert "Interleaved timing, 2 rounds" in report and "energycrf faster by" in report
    assert (tmp_path / "solvers_benchmark.png").stat().st_size > 0


def test_interleaved_table_ratios_are_peer_over_the_fastest_energycrf_method_of_the_dtype(load_script):
    mod = load_script("benchmarks/solvers_benchmark.py")

    def row(method, kind, dtype, median, minimum, missed=0):
        return {"method": method, "kind": kind, "dtype": dtype, "median": median, "min": minimum, "missed": missed}

    rows = [row("ours a", "energycrf", "float32", 0.02, 0.01), row("ours b", "energycrf", "float32", 0.01, 0.008),
            row("ours c", "energycrf", "float64", 0.05, 0.04), row("peer", "peer", "float32", 0.03, 0.02),
            row("peer", "peer", "float64", 0.2, 0.1), row("slow peer", "peer", "float64", None, None, missed=2)]
    # peak memory of the single runs: ours b and the float32 peer measured, ours c not
    runs = [{"method": "ours b", "dtype": "float32", "peak_mib": 4.0}, {"method": "peer", "dtype": "float32", "peak_mib": 10.0},
            {"method": "peer", "dtype": "float64", "peak_mib": 3.0}]
    table = mod.interleaved_table({"interleaved": {"rounds": 2, "rows": rows}, "runs": runs}).splitlines()
    assert "(float32: ours b; float64: ours c)" in table[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table if line.startswith("| ")][1:]
    body = {(c[0], c[1]): c for c in cells}  # method, dtype, median, min, ratio
    assert body[("peer", "float32")][4] == "**3.00x** / 2.50x"  # 0.03 / 0.01, 0.02 / 0.008
    assert body[("peer", "float32")][5] == "2.50x"  # 10 MiB / 4 MiB
    assert body[("peer", "float64")][5] == "-"  # ours c has no measurement
    assert body[("peer", "float64")][4] == "**4.00x** / 2.50x"  # 0.2 / 0.05, 0.1 / 0.04
    assert body[("ours a", "float32")][4] == "-"
    assert body[("slow peer", "float64")][2] == "not reached (2 missed)"


def test_interleaved_rounds_with_no_method_at_the_gap_time_nothing(load_script):
    mod = load_script("benchmarks/solvers_benchmark.py")
    plan = [("m", "energycrf", lambda n: None, "float32", True)]
    out = mod.interleaved("p", plan, [{"iters_to_gap": None}], 0.0, None, None, rounds=3)
    assert out == {"rounds": 3, "rows": []}


@pytest.mark.parametrize("warm", [True, False])
def test_interleaved_rounds_run_each_method_once_untimed_before_its_timed_run(load_script, warm):
    """``warm``: every timed run follows an untimed run of the same method with the same budget
    (``--cold``: the timed run alone); only the timed run's iterates and times count."""
    mod = load_script("benchmarks/solvers_benchmark.py")
    calls = []

    def method(name, seconds):
        def run(n):
            calls.append((name, n))
            return [torch.zeros(1)], [seconds[len([c for c in calls if c[0] == name]) - 1]], {}, [0]
        return run

    plan = [("a", "energycrf", method("a", [1.0, 2.0, 3.0, 4.0]), "float32", True),
            ("b", "peer", method("b", [5.0, 6.0, 7.0, 8.0]), "float32", True)]
    runs = [{"iters_to_gap": 1}, {"iters_to_gap": 3}]
    E64 = lambda y, x: torch.zeros(1)  # noqa: E731  (every iterate at the best energy: gap 0)
    out = mod.interleaved("p", plan, runs, 1.0, E64, torch.zeros(1), rounds=2, warm=warm)
    assert out["warm"] is warm
    expected = [("a", 1), ("b", 3), ("b", 3), ("a", 1)] if not warm else \
        [("a", 1), ("a", 1), ("b", 3), ("b", 3), ("b", 3), ("b", 3), ("a", 1), ("a", 1)]
    assert calls == expected
    seconds = {r["method"]: r["seconds"] for r in out["rows"]}
    assert seconds == ({"a": [2.0, 4.0], "b": [6.0, 8.0]} if warm else {"a": [1.0, 2.0], "b": [5.0, 6.0]})


def test_preconditioner_setup_benchmark_compares_equal_operators(capsys, load_script):
    """The plain set-up it times against gives the same operator, and the script runs."""
    import torch

    mod = load_script("benchmarks/preconditioner_setup.py")
    from energycrf.solvers.preconditioners import spectral as S
    from energycrf.solvers.base import Problem

    x = torch.randn(2, 4, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    E = mod.mixing_energy().double()
    v = torch.randn_like(x)
    ours = S.spectral_preconditioner(Problem(E, x), x).with_refine(1)
    original = S._floored_inverse
    with mock.patch.object(mod, "plain_inverse", wraps=mod.plain_inverse) as plain_inverse, mod.plain_setup():
        plain = S.spectral_preconditioner(Problem(E, x), x).with_refine(1)
    assert plain_inverse.call_count == 1  # the plain set-up really went through the eigendecomposition
    assert S._floored_inverse is original  # restored
    assert not ours.diagonal and ours.positive_definite and plain.positive_definite
    torch.testing.assert_close(ours(v), plain(v), rtol=1e-10, atol=1e-12)
    mod.main(["--rounds", "1"])
    out = capsys.readouterr().out
    assert "Cholesky-tested vs eigh" in out and "MatrixCompatibility" in out


def test_solve_breakdown_times_every_part_and_restores_them(capsys, load_script):
    """Every part of the one-iteration solve is timed (own time, nested parts out), and the
    timers are removed afterwards."""
    mod = load_script("benchmarks/solve_breakdown.py")
    originals = [getattr(owner, attr) for owner, attr, _ in mod.PARTS]
    mod.main(["--size", "32", "--rounds", "2", "--peer-evals", "3,3"])
    assert [getattr(owner, attr) for owner, attr, _ in mod.PARTS] == originals
    out = capsys.readouterr().out
    for problem in ("camera (1, 1, 32, 32)", "latent (4, 4, 64, 64)"):
        assert problem in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| part")]
    values = {}
    for line in rows:
        label, ms = line.strip("| ").rsplit(" | ", 1)
        values.setdefault(label, []).append(float(ms))
    # every wrapped part was reached (a part whose timer stopped intercepting would read 0.00)
    for _, _, label in mod.PARTS:
        assert len(values[label]) == 2 and all(v > 0 for v in values[label]), label
    assert len(values[mod.DRIVER]) == 2


def test_energy_evaluation_benchmark_compares_equal_results(capsys, load_script):
    """What it times against gives the same values: ``F.conv2d`` for the depthwise path (and
    really goes there), the terms' own energies for the shared convolution; the script runs."""
    import torch

    import energycrf as ec

    mod = load_script("benchmarks/energy_evaluation.py")
    from energycrf.energies import operators
    from energycrf.apps.compare_solvers import default_energy

    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 11, 9, generator=g, dtype=torch.float64)
    w = torch.rand(3, 1, 5, 5, generator=g, dtype=torch.float64)
    ours = operators.conv2d(u, w, padding=2, groups=3)
    original = operators.depthwise_by_shifts
    with mock.patch.object(operators.F, "conv2d", wraps=operators.F.conv2d) as calls, mod.through_conv2d():
        plain = operators.conv2d(u, w, padding=2, groups=3)
    assert calls.call_count == 1 and operators.depthwise_by_shifts is original
    torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    E = default_energy(3, seed=0).double()
    torch.testing.assert_close(E(u, u), mod.terms_apart(E, u, u), rtol=1e-12, atol=1e-12)
    # the float32 message's peer: the same values from one groups=C convolution of the batch as it is
    kernel = ec.energies.LocalKernel(radius=2)
    u32 = torch.randn(3, 2, 40, 24, generator=g)
    with mock.patch.object(operators, "BAND_WORK", 0), \
            mock.patch.object(operators.F, "conv2d", wraps=operators.F.conv2d) as calls:
        banded = kernel.message(u32)
        assert calls.call_args.kwargs["groups"] == 6 * 2 and calls.call_args.args[0].shape[0] == 1  # 6 images, 2 bands
        with mod.plain_messages():
            plain32 = kernel.message(u32)
        assert calls.call_args.kwargs["groups"] == 2 and calls.call_args.args[0].shape == u32.shape
    assert ec.energies.LocalKernel.scaled_message is not mod.plain_message
    torch.testing.assert_close(banded, plain32, rtol=1e-5, atol=1e-5)
    mod.main(["--rounds", "1", "--size", "32"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line and " ms |" not in line]
    # three float64 convolutions, two float64 camera rows, four energies, four float32 messages, two solves
    assert len(rows) == 3 + 2 + 4 + 4 + 2, out


def test_preconditioner_gaps_script_on_a_small_photograph(capsys, load_script):
    """benchmarks/preconditioner_gaps.py runs on a 32 x 32 photograph: every gap is finite and
    not below the converged minimum, more Richardson steps converge faster, the quadratic start
    beats ``x`` after one iteration, and the experimental preconditioner is unpatched after."""
    import math

    import pytest

    mod = load_script("benchmarks/preconditioner_gaps.py")
    original = mod.lbfgs_module.make_preconditioner
    rows = mod.main(["--problems", "camera", "--size", "32"])
    assert mod.lbfgs_module.make_preconditioner is original
    gaps = {label: g for problem, label, g in rows if problem == "camera"}
    assert len(rows) == len(gaps) == 7
    for g in gaps.values():
        assert len(g) == 3 and all(math.isfinite(v) and v > -1e-12 for v in g)
    after_two = [gaps[f"FFT, refine={k}"][1] for k in (0, 1, 2)]
    assert after_two[0] > after_two[1] > after_two[2]
    assert gaps["FFT, refine=1, from y0='quadratic'"][0] < gaps["FFT, refine=1"][0]
    assert "| camera | FFT, refine=0 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mod.main(["--problems", "moon"])


def test_memory_worker_measures_one_solve_in_a_fresh_process(load_script):
    """The peak memory of energycrf's one-iteration solve of a 256 x 256 photograph (float32)
    is at least one image (its result) and far below what a leak of the iterates would give;
    the runs it measures copy no iterate."""
    import torch

    mod = load_script("benchmarks/solvers_benchmark.py")
    x, E = mod.problem_input("camera", 256)
    plan = mod.methods(E, x, cd_iters=1)
    index = next(i for i, p in enumerate(plan) if p[0] == "energycrf lbfgs (chebyshev, quadratic start)" and p[3] == "float32")
    bare = mod.methods(E.float(), x.float(), cd_iters=1, keep=False)
    assert all(run(1) is None for _, _, run, dt, _ in bare if dt == "float32")
    image_mib = x.numel() * 4 / 2**20  # 0.25 MiB
    mib = mod.measure_memory("camera", 256, threads=1, index=index, budget=1, cd_iters=1)
    assert image_mib <= mib < 100 * image_mib
    assert isinstance(plan[index][2](1)[0][0], torch.Tensor)  # keep=True: the iterates


def test_torch_lbfgs_memory_run_stops_with_the_iteration_that_reached_the_gap(load_script):
    """Every closure call of torch.optim.LBFGS is an iterate, tagged with its L-BFGS iteration; the
    memory run, given that iteration, makes exactly the calls up to its end (no more history)."""
    mod = load_script("benchmarks/solvers_benchmark.py")
    x, E = mod.problem_input("camera", 32)
    E32, x32 = E.float(), x.float()
    iterates, times, evals, iterations = mod.run_torch_lbfgs(E32, x32, torch.float32, 6, fused=True)
    assert len(iterates) == len(times) == len(iterations) == evals["energy_and_grad"] + 1
    assert iterations[0] == 0 and iterations == sorted(iterations) and iterations[-1] <= 6
    gap_call = 4  # as if the gap were reached at the 4th closure call
    m = iterations[gap_call]
    real = type(E32).energy_and_grad
    with mock.patch.object(type(E32), "energy_and_grad", autospec=True, side_effect=real) as calls:
        assert mod.run_torch_lbfgs(E32, x32, torch.float32, m, fused=True, keep=False, max_evals=25 * m + 1) is None
    # iterate 0 is the start (no call); iterate k is the k-th closure call
    assert calls.call_count == sum(1 for it in iterations[1:] if it <= m) >= gap_call


def test_benchmark_keeps_its_timings_when_the_memory_worker_fails(tmp_path, capsys, load_script):
    mod = load_script("benchmarks/solvers_benchmark.py")
    failure = subprocess.CalledProcessError(1, ["worker"], stderr="Traceback ...\nPermissionError: clear_refs")
    with mock.patch.object(mod, "measure_memory", side_effect=failure) as measure:
        mod.main(["--problems", "camera", "--size", "16", "--max-iters", "30", "--cd-iters", "1", "--rounds", "0",
                  "--out", str(tmp_path)])
    assert measure.call_count == 1  # it stops measuring after the first failure
    out = capsys.readouterr().out
    assert "peak memory not measured: the worker failed (exit 1)" in out and "PermissionError: clear_refs" in out
    (result,) = json.loads((tmp_path / "solvers_benchmark.json").read_text())
    assert all("peak_mib" not in r for r in result["runs"]) and any(r["iters_to_gap"] for r in result["runs"])


def test_memory_is_measured_to_the_iteration_that_reached_the_gap(tmp_path, load_script):
    """Each run's memory budget is the solver iteration in which it reached the gap: for
    torch.optim.LBFGS that is fewer than its closure calls to the gap (its iterates)."""
    mod = load_script("benchmarks/solvers_benchmark.py")
    with mock.patch.object(mod, "measure_memory", return_value=1.5) as measure:
        mod.main(["--problems", "camera", "--size", "16", "--max-iters", "30", "--cd-iters", "1", "--rounds", "0",
                  "--out", str(tmp_path)])
    (result,) = json.loads((tmp_path / "solvers_benchmark.json").read_text())
    reached = [(i, r) for i, r in enumerate(result["runs"]) if r["iters_to_gap"] is not None]
    budgets = {c.kwargs["index"]: c.kwargs["budget"] for c in measure.call_args_list}
    assert sorted(budgets) == [i for i, _ in reached]
    for i, r in reached:
        assert budgets[i] == max(1, r["iteration_at_gap"]) and r["peak_mib"] == 1.5
        if r["method"].startswith("torch.optim.LBFGS"):
            assert r["iteration_at_gap"] < r["iters_to_gap"]
        else:
            assert r["iteration_at_gap"] == r["iters_to_gap"]
