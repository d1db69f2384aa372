"""The README's code runs as written, and its two set-up commands are the ones CI uses."""

from __future__ import annotations

import re

from pathlib import Path

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"

SETUP = 'apt-get update && apt-get install -y dataset-fashion-mnist && pip install torch==2.13.0'
TEST_COMMAND = SETUP + ' && pip install -e ".[test,docs,ldm]" && python -m pytest'
MAIN_COMMAND = SETUP + ' && pip install -e ".[ldm]" && energycrf demo'


def test_readme_python_blocks_run(run_markdown):
    namespace = run_markdown(README)
    # The quickstart's own check: analytic gradient equals autograd.
    g, g_ad = namespace["g"], namespace["g_ad"]
    assert g.shape == g_ad.shape
    assert (g - g_ad).abs().max().item() < 1e-4
    # The solve lowers the energy of every sample; the layer keeps the latent's shape.
    res = namespace["res"]
    assert (res.energies[-1] < res.energies[0]).all()
    assert namespace["z"].shape == (2, 4, 32, 32)
    assert torch.isfinite(namespace["z"]).all()


def test_readme_has_exactly_two_setup_commands(markdown_blocks):
    text = README.read_text(encoding="utf-8")
    section = text.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = [b.strip() for b in markdown_blocks(section, "bash")]
    assert commands == [MAIN_COMMAND, TEST_COMMAND]
    assert "main job" in section.lower() and "run the tests" in section.lower()


def test_ci_runs_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for step in TEST_COMMAND.split(" && "):
        # the step itself, optionally under `timeout N`, via `python -m`, with reporting flags
        pattern = r"^\s*(timeout \d+ )?(python -m )?" + re.escape(step) + r"( --[\w-]+(=\S+)?)*\s*$"
        assert re.search(pattern, ci, re.M), step


def test_main_command_entry_point_exists():
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["scripts"]["energycrf"] == "energycrf.cli:main"
    from energycrf.cli import main  # noqa: F401  (importable)



def test_readme_lists_every_command():
    from energycrf.cli import COMMANDS

    text = README.read_text(encoding="utf-8")
    for name in COMMANDS:
        assert f"energycrf {name}" in text, f"README does not show `energycrf {name}`"
