"""The documentation builds with warnings as errors, and its code examples run."""

from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"

# Pages whose python blocks are executable examples (run in order, one namespace per page).
EXECUTABLE_PAGES = ["index.md", "energy-model.md", "custom-terms.md", "solvers.md", "latent-crf.md"]


def test_mkdocs_build_strict(tmp_path):
    """`mkdocs build --strict`: broken links, missing pages, bad API references fail."""
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
         "-f", str(REPO_ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=REPO_ROOT,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / "index.html").is_file()
    # The API pages were generated from the docstrings, not left empty.
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("Unary", "Pairwise", "FieldOfExperts", "Energy", "solve", "check_energy"):
        assert name in api, f"API page misses {name}"
    # Docstring examples are rendered as code (docs/griffe_extensions.py), not as prose.
    assert '<span class="gp">&gt;&gt;&gt; </span>' in api
    assert "<p>&gt;&gt;&gt;" not in api


@pytest.mark.parametrize("page", EXECUTABLE_PAGES)
def test_docs_examples_run(page, run_markdown):
    run_markdown(DOCS / page)



def test_nav_hook_adds_unlisted_pages_and_drops_missing_ones(tmp_path, load_script):
    hooks = load_script("docs/mkdocs_hooks.py")
    (tmp_path / "index.md").write_text("# Home\n")
    (tmp_path / "new-page.md").write_text("intro\n# A new page\n")
    config = {"docs_dir": str(tmp_path), "nav": [
        {"Home": "index.md"},
        {"Guide": [{"Not written yet": "missing.md"}]},
        {"API reference": "api-missing.md"},
    ]}
    nav = hooks.on_config(config)["nav"]
    assert nav == [{"Home": "index.md"}, {hooks.SECTION: [{"A new page": "new-page.md"}]}]
