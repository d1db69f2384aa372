"""Solvers that installed packages offer through the ``energycrf.solvers`` entry-point group join
the registry by name, in any process: ``ec.solve``, ``method_names``, the compare tool's defaults
and the solver suite find them without the package's module being imported first."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from energycrf.solvers import api

REPO = Path(__file__).resolve().parents[2]

PLUGIN_MODULE = '''
import torch
from energycrf.solvers import Solver, StepOutput


class HalfStep(Solver):
    """Gradient steps of length 1/4 on a test energy (``Unary``: curvature 2)."""

    name = "half_step_plugin"
    monotone = True

    def init_state(self, problem, y, e, g):
        return None

    def step(self, problem, y, e, g, state):
        y = y - 0.25 * g
        return StepOutput(y=y, energy=problem.energy(y))
'''


def _distribution(root: Path, entry: str) -> None:
    """A stand-in installed distribution on ``root``: its module and its dist-info with the entry point."""
    (root / "energycrf_plugin_demo.py").write_text(PLUGIN_MODULE)
    info = root / "energycrf_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: energycrf-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[energycrf.solvers]\n{entry}\n")


def _fresh_process(root: Path, code: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": f"{root}:{REPO}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_an_installed_solver_is_found_by_name_in_a_fresh_process(tmp_path):
    _distribution(tmp_path, "half_step_plugin = energycrf_plugin_demo:HalfStep")
    done = _fresh_process(tmp_path, """
        import sys, torch, energycrf as ec
        from energycrf.solvers.compare import default_methods
        x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
        res = ec.solve(ec.energies.Unary(), x, method="half_step_plugin", y0=x + 1, max_iters=200)
        assert "energycrf_plugin_demo" in sys.modules
        assert "half_step_plugin" in ec.solvers.method_names() and "half_step_plugin" in default_methods()
        ec.testing.check_solver("half_step_plugin")
        print(res.status, float((res.y - x).abs().max()))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("['converged', 'converged']")
    assert float(done.stdout.split()[-1]) < 1e-6


def test_a_broken_entry_point_warns_and_the_built_ins_still_work(tmp_path):
    _distribution(tmp_path, "missing = energycrf_plugin_demo:NoSuchSolver")
    done = _fresh_process(tmp_path, """
        import warnings, torch, energycrf as ec
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = ec.solvers.method_names()
        assert "missing" not in names and "lbfgs" in names
        assert any(issubclass(w.category, ec.solvers.SolverWarning) and "'missing'" in str(w.message)
                   for w in caught), [str(w.message) for w in caught]
        ec.solve(ec.energies.Unary(), torch.randn(1, 1, 4, 4), method="lbfgs")
    """)
    assert done.returncode == 0, done.stderr[-3000:]


def test_entry_points_load_once_and_keep_a_registered_name(monkeypatch):
    calls = []

    class Point:
        name, value = "lbfgs", "elsewhere:Other"

        def load(self):
            calls.append(self.name)
            raise AssertionError("a registered name is not replaced")

    monkeypatch.setattr(api, "_loaded_entry_points", False)
    monkeypatch.setattr(api, "entry_points", lambda group: [Point()] if group == api.ENTRY_POINT_GROUP else [])
    assert "lbfgs" in api.method_names() and "lbfgs" in api.method_names()
    assert calls == [] and api._loaded_entry_points


def test_a_solver_class_passed_as_method_gets_a_hint():
    import torch
    import energycrf as ec

    with pytest.raises(ValueError, match=r"pass an instance \(Method\(\)\) or a name"):
        ec.solve(ec.energies.Unary(), torch.zeros(1, 1, 2, 2), method=ec.solvers.LBFGS)
