"""MkDocs hook (mkdocs.yml ``hooks:``) that keeps the nav and the pages in step.

- A page under docs/ that the nav does not list joins a "More guides" section (titled by
  its first ``# heading``) instead of failing the strict build; list it in mkdocs.yml to
  give it its place.
- A nav entry whose page does not exist is dropped (logged), so the nav can name a page
  another change is still adding.
"""

from __future__ import annotations

import logging
from pathlib import Path

SECTION = "More guides"
log = logging.getLogger("mkdocs.hooks.nav")


def _prune(nav: list, docs: Path) -> list:
    """The nav without entries whose ``.md`` file is missing (empty sections removed)."""
    out = []
    for item in nav:
        title, value = next(iter(item.items())) if isinstance(item, dict) else (None, item)
        if isinstance(value, list):
            value = _prune(value, docs)
            if not value:
                continue
        elif isinstance(value, str) and value.endswith(".md") and not (docs / value).is_file():
            log.info("nav: %s is not in docs/ (yet); leaving it out", value)
            continue
        out.append({title: value} if title is not None else value)
    return out


def _listed(nav: list) -> set[str]:
    out: set[str] = set()
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            out |= _listed(value)
        elif isinstance(value, str):
            out.add(value)
    return out


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("-", " ").capitalize()


def on_config(config, **kwargs):
    if not config.get("nav"):
        return config
    docs = Path(config["docs_dir"])
    nav = _prune(config["nav"], docs)
    listed = _listed(nav)
    extra = sorted(p for p in docs.rglob("*.md") if p.relative_to(docs).as_posix() not in listed)
    if extra:
        section = {SECTION: [{_title(p): p.relative_to(docs).as_posix()} for p in extra]}
        # before the reference pages at the end
        at = next((i for i, item in enumerate(nav) if isinstance(item, dict) and "API reference" in item), len(nav))
        nav.insert(at, section)
    config["nav"] = nav
    return config
