"""benchmarks/solvers_benchmark.py runs end to end on a small photograph, interleaved rounds
included (the real run is documented in docs/solvers.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCH))  # the scripts import their neighbours (machine_info, ...)
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_benchmark_runs_and_interleaved_rounds_reach_the_gap(tmp_path):
    mod = _load("solvers_benchmark")
    mod.main(["--problems", "camera", "--size", "32", "--max-iters", "40", "--cd-iters", "2",
              "--rounds", "2", "--out", str(tmp_path)])
    (result,) = json.loads((tmp_path / "solvers_benchmark.json").read_text())
    runs = {(r["method"], r["dtype"]): r for r in result["runs"]}
    for start in ("fft precond.", "fft, quadratic start"):
        ours = runs[(f"energycrf lbfgs ({start})", "float64")]
        assert ours["iters_to_gap"] is not None and ours["final_gap"] <= mod.TARGET
    # the quadratic start's row 0 is its own iterate (not x): its gap differs from the x start's
    assert runs[("energycrf lbfgs (fft, quadratic start)", "float64")]["gaps"][0] < runs[("energycrf lbfgs (fft precond.)", "float64")]["gaps"][0]
    assert min(min(r["gaps"]) for r in result["runs"]) == 0.0  # the best energy is one of the runs'
    rows = result["interleaved"]["rows"]
    timed = {(r["method"], r["dtype"]) for r in rows}
    # every fast method that reached the gap in its single run is timed, and reaches it again
    expected = {(m, d) for (m, d), r in runs.items() if r["iters_to_gap"] is not None
                and ("lbfgs (fft" in m or r["kind"] == "peer")}
    assert timed == expected
    for r in rows:
        assert len(r["seconds"]) == 2 and r["missed"] == 0 and 0 < r["min"] <= r["median"]
    report = (tmp_path / "solvers_benchmark.md").read_text()
    assert "Interleaved timing, 2 rounds" in report and "energycrf faster by" in report
    assert (tmp_path / "solvers_benchmark.png").stat().st_size > 0


def test_interleaved_rounds_with_no_method_at_the_gap_time_nothing():
    mod = _load("solvers_benchmark")
    plan = [("m", "energycrf", lambda n: None, "float32", True)]
    out = mod.interleaved("p", plan, [{"iters_to_gap": None}], 0.0, None, None, rounds=3)
    assert out == {"rounds": 3, "rows": []}
