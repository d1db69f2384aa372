"""Griffe extension used by the docs build (mkdocs.yml): read ``Example:`` as ``Examples:``.

The project's Google-style docstrings write a singular ``Example:`` heading above doctest
blocks. Griffe only knows the plural as a section, so the singular would be rendered as
Markdown prose (``>>>`` lines as text, ``[...]`` outputs as broken links). Renaming the
heading at load time makes them rendered as code, without touching the sources.
"""

from __future__ import annotations

import re

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        doc = obj.docstring
        if doc is not None and "Example:" in doc.value:
            doc.value = _SINGULAR.sub(r"\1Examples:", doc.value)
