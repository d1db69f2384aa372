"""docs/conformance.md: its python blocks run in order, as written."""

from __future__ import annotations


def test_conformance_page_runs(run_markdown, repo_root):
    ns = run_markdown(repo_root / "docs" / "conformance.md")
    # the page's own term passed the suite, and the required-margin variant was caught
    assert ns["failure"].check == "convexity_margin"
    assert "test_grad" in dir(ns["suite"]) and "test_majorizer" in dir(ns["suite"])
