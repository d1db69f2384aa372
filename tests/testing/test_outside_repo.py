"""The shipped suites run in a user's project as they run here.

A user's project has none of this repository's configuration: no hypothesis profile (so
hypothesis's 200 ms deadline and 100 examples), ``--strict-markers`` rejecting markers it
has not registered, no ``conftest.py``. Each test writes such a project into ``tmp_path``,
outside the repository, and runs pytest there in a subprocess on the package under test
(``PYTHONPATH``); the package's pytest plugin comes from its installed ``pytest11`` entry
point, or from ``-p energycrf.testing.pytest_plugin`` where the entry point is not installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "energycrf.testing.pytest_plugin"

USER_TESTS = '''
"""A user's own term and its conformance test classes."""
import time

import torch

import energycrf as ec
from energycrf.testing import EnergyConformance


class MyTerm(ec.Energy):
    """a/2 times the squared horizontal differences, with its own gradient."""

    is_quadratic = True
    interaction_radius = 1

    def __init__(self, a=0.5):
        super().__init__()
        self.a = a

    def energy(self, y, x, c=None):
        return 0.5 * self.a * ((y[..., 1:] - y[..., :-1]) ** 2).sum((1, 2, 3))

    def _grad(self, y, x, c):
        d = self.a * (y[..., 1:] - y[..., :-1])
        g = torch.zeros_like(y)
        g[..., 1:] += d
        g[..., :-1] -= d
        return g

    def convexity_margin(self, c=None):
        return 0.0


class WrongGradient(MyTerm):
    def _grad(self, y, x, c):
        return 1.5 * super()._grad(y, x, c)


class TestMyTerm(EnergyConformance):
    conditions = (None,)
    min_size, max_size = 2, 4
    example_fraction = 0.3

    def make_energy(self, case):
        return MyTerm()


class TestSlowTerm(EnergyConformance):
    """Each example takes longer than hypothesis's default deadline."""

    conditions = (None,)
    min_size, max_size = 2, 3
    skip_checks = tuple(name for name in ec.testing.CHECKS if name != "grad")
    example_fraction = 0.2

    def make_energy(self, case):
        time.sleep(0.25)
        return MyTerm()


class TestWrongGradient(EnergyConformance):
    conditions = (None,)
    min_size, max_size = 2, 3  # at least two columns: a horizontal difference to get wrong
    skip_checks = tuple(name for name in ec.testing.CHECKS if name != "grad")
    example_fraction = 0.2

    def make_energy(self, case):
        return WrongGradient()
'''


def _entry_point_installed() -> bool:
    return any(ep.value == PLUGIN for ep in importlib.metadata.entry_points(group="pytest11"))


def _user_env(*paths: Path) -> dict[str, str]:
    """The environment of a user's shell: the package under test importable, no CI variables
    (hypothesis would load its own "ci" profile, which has no deadline)."""
    try:
        from hypothesis._settings import _CI_VARS as ci_vars
    except ImportError:  # private in hypothesis: the common ones
        ci_vars = {"CI": None, "GITHUB_ACTIONS": None, "TF_BUILD": None, "GITLAB_CI": None}
    env = {k: v for k, v in os.environ.items() if k not in ci_vars and k != "HYPOTHESIS_PROFILE"}
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in paths), str(REPO), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run_pytest(project: Path, *args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    """pytest in ``project`` (rootdir and configuration there); the outcome of each test by its id."""
    report = project / "report.xml"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(project),
           "-c", str(project / "pytest.ini"), "--strict-markers", f"--junitxml={report}", "-q", *args]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    outcomes = {}
    if report.is_file():
        for case in ET.parse(report).getroot().iter("testcase"):
            kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            outcomes[f"{case.get('classname').split('.')[-1]}.{case.get('name')}"] = kinds[0] if kinds else "passed"
    return proc, outcomes


def _user_project(tmp_path: Path, tests: str, ini: str = "[pytest]\n") -> Path:
    project = tmp_path / "user_project"
    project.mkdir()
    assert REPO not in project.parents  # outside the repository
    (project / "pytest.ini").write_text(ini, encoding="utf-8")
    (project / "test_my_term.py").write_text(textwrap.dedent(tests), encoding="utf-8")
    return project


@pytest.mark.parametrize("ini", ["[pytest]\n", "[pytest]\nfilterwarnings =\n    error\n"],
                         ids=["defaults", "warnings-as-errors"])
def test_energy_conformance_passes_and_fails_in_a_users_project(tmp_path, ini):
    """Also in a project that turns warnings into errors: the deprecation warnings torch and
    hypothesis raise inside the checks are not the user's (the plugin filters them)."""
    project = _user_project(tmp_path, USER_TESTS, ini)
    plugin = [] if _entry_point_installed() else ["-p", PLUGIN]
    proc, outcomes = _run_pytest(project, *plugin, env=_user_env())
    log = proc.stdout[-4000:] + proc.stderr[-2000:]
    ran = {name.split(".")[0] for name in outcomes}
    assert ran == {"TestMyTerm", "TestSlowTerm", "TestWrongGradient"}, log
    for name, outcome in outcomes.items():
        cls, test = name.split(".")
        if cls == "TestWrongGradient" and test == "test_grad":
            assert outcome == "failure", log  # the suite can fail: a wrong gradient does
        elif test == "test_device" or (cls != "TestMyTerm" and test != "test_grad"):
            assert outcome in ("passed", "skipped"), (name, log)  # no CUDA here / a skipped check
        else:
            assert outcome == "passed", (name, log)
    assert "DeadlineExceeded" not in proc.stdout, log
    assert proc.returncode == 1, log  # the one expected failure, no collection or usage error


def test_the_plugin_registers_the_gpu_marker_through_its_entry_point(tmp_path):
    """pytest loads the plugin by its ``pytest11`` entry point (a stand-in distribution where the
    package is not installed), under the name ``energycrf``: ``--strict-markers`` accepts ``gpu``,
    gpu tests skip without CUDA, and ``-p no:energycrf`` switches it off."""
    project = _user_project(tmp_path, '''
        import pytest


        @pytest.mark.gpu
        def test_on_a_gpu():
            import torch

            assert torch.cuda.is_available()


        def test_anywhere():
            pass
    ''')
    paths = []
    if not _entry_point_installed():
        site = tmp_path / "site"
        info = site / "energycrf_plugin_stand_in-0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: energycrf-plugin-stand-in\nVersion: 0\n",
                                       encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[pytest11]\nenergycrf = {PLUGIN}\n", encoding="utf-8")
        paths.append(site)
    env = _user_env(*paths)
    proc, outcomes = _run_pytest(project, env=env)
    import torch

    expected_gpu = "passed" if torch.cuda.is_available() else "skipped"
    assert outcomes == {"test_my_term.test_on_a_gpu": expected_gpu, "test_my_term.test_anywhere": "passed"}, \
        proc.stdout + proc.stderr
    assert proc.returncode == 0
    proc, _ = _run_pytest(project, "-p", "no:energycrf", env=env)
    assert proc.returncode != 0 and "'gpu' not found in `markers`" in proc.stdout + proc.stderr


def test_pyproject_declares_the_plugin_entry_point():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["entry-points"]["pytest11"] == {"energycrf": PLUGIN}
    module = importlib.import_module(PLUGIN)
    assert callable(module.pytest_configure) and callable(module.pytest_collection_modifyitems)


class _Config:
    def __init__(self):
        self.ini = {"markers": [], "filterwarnings": []}

    @property
    def lines(self):
        return self.ini["markers"]

    def getini(self, name):
        return list(self.ini[name])

    def addinivalue_line(self, name, line):
        self.ini[name].append(line)


class _Item:
    def __init__(self, gpu):
        self.markers = [pytest.mark.gpu.mark] if gpu else []

    def get_closest_marker(self, name):
        return next((m for m in self.markers if m.name == name), None)

    def add_marker(self, marker):
        self.markers.append(marker.mark)


def test_running_the_plugin_hooks_twice_is_harmless():
    """Loaded twice (the entry point and a project's own registration), the hooks add the marker
    line and the skip again: the marker stays one marker, the test one skipped test."""
    import torch

    module = importlib.import_module(PLUGIN)
    config, items = _Config(), [_Item(gpu=True), _Item(gpu=False)]
    for _ in range(2):
        module.pytest_configure(config)
        module.pytest_collection_modifyitems(config, items)
    assert config.lines == [module.GPU_MARKER] * 2
    assert config.ini["filterwarnings"] == list(module.THIRD_PARTY_WARNINGS)  # added once
    skips = [m for m in items[0].markers if m.name == "skip"]
    assert len(skips) == (0 if torch.cuda.is_available() else 2)
    assert items[1].markers == []
