"""Shared pytest configuration: hypothesis profiles, the package's pytest plugin, Markdown helpers.

Profiles (select with ``HYPOTHESIS_PROFILE=<name>``):

- ``ci``: bounded and deterministic enough for 2-core CI (used when ``CI`` is set);
- ``dev``: the default for local runs;
- ``thorough``: many examples, for hunting bugs locally.

Individual tests must not raise ``max_examples`` beyond small overrides: the profile rules.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=10,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)


def _profile_name() -> str:
    explicit = os.environ.get("HYPOTHESIS_PROFILE")
    if explicit:
        return explicit
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return "ci"
    return "dev"


PROFILE = _profile_name()
settings.load_profile(PROFILE)

# The tests use small tensors, where OpenMP's thread hand-offs cost more than they save,
# and on a shared 2-core machine a second thread turns each small op into a wait
# (coordinate descent on [2, 4, 32, 32]: 0.4 s on 1 thread, 20-40 s on 2 under load).
# ENERGYCRF_TEST_THREADS=N overrides.
torch.set_num_threads(int(os.environ.get("ENERGYCRF_TEST_THREADS", "1")))


def pytest_report_header(config):
    return (
        f"hypothesis profile: {PROFILE}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )


def pytest_configure(config):
    # the `gpu` marker and its skip come from the package's plugin, as in a user's project: loaded
    # by the installed `pytest11` entry point or `-p energycrf.testing.pytest_plugin`, else here
    from energycrf.testing import pytest_plugin

    if not config.pluginmanager.is_registered(pytest_plugin):
        config.pluginmanager.register(pytest_plugin, "energycrf")


# --- executing the code in Markdown files (README, docs) ---------------------------------

_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^```\s*$", re.M | re.S)


def code_blocks(text: str, lang: str = "python") -> list[str]:
    """The bodies of the fenced code blocks in Markdown ``text`` whose language is ``lang``."""
    return [m.group("body") for m in _FENCE.finditer(text) if m.group("lang") == lang]


def markdown_code_blocks(path: Path, lang: str = "python") -> list[str]:
    """The bodies of the fenced code blocks in the file ``path`` whose language is ``lang``."""
    return code_blocks(Path(path).read_text(encoding="utf-8"), lang)


def run_markdown_python(path: Path, workdir: Path) -> dict:
    """Execute every ``python`` block of ``path`` in order, in one namespace, in ``workdir``.

    Blocks of one page share a namespace like a tutorial; a failing block raises with
    its index and file so the report points at the right snippet.
    """
    blocks = markdown_code_blocks(path)
    if not blocks:
        raise AssertionError(f"{path} has no python code blocks to run")
    namespace: dict = {"__name__": f"markdown_{Path(path).stem}"}
    old = os.getcwd()
    os.chdir(workdir)
    try:
        for k, body in enumerate(blocks):
            code = compile(body, f"{path}:python-block-{k}", "exec")
            exec(code, namespace)
    finally:
        os.chdir(old)
    return namespace


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def run_markdown(tmp_path, monkeypatch):
    """``run_markdown(path)`` executes the python blocks of a Markdown file in ``tmp_path``.

    A page's example may register a solver (``@register_solver``); the registry is restored
    afterwards, so the tests that follow see the built-in methods only."""
    from energycrf.solvers import SOLVERS

    monkeypatch.setenv("MPLBACKEND", "Agg")
    registered = dict(SOLVERS)

    def _run(path: Path) -> dict:
        return run_markdown_python(path, tmp_path)

    yield _run
    SOLVERS.clear()
    SOLVERS.update(registered)


@pytest.fixture
def markdown_blocks():
    """``markdown_blocks(text, lang="python")``: the fenced code blocks of Markdown text."""
    return code_blocks


def load_script(relative: str):
    """The module of a script outside the package (``benchmarks/x.py``, ``scripts/x.py``, ...), with
    its folder on ``sys.path`` while it loads (scripts import their neighbours)."""
    import importlib.util
    import sys

    path = REPO_ROOT / relative
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


@pytest.fixture(name="load_script")
def load_script_fixture():
    """``load_script("benchmarks/name.py")``: see :func:`load_script`."""
    return load_script
