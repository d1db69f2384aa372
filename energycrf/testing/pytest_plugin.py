"""The package's pytest plugin: the ``gpu`` marker of the conformance suites.

:class:`~energycrf.testing.EnergyConformance` marks its device test ``gpu``. A project that
runs pytest with ``--strict-markers`` rejects a marker it has not registered; this plugin
registers it and skips ``gpu`` tests when no CUDA device is present, and it keeps two
deprecation warnings raised inside torch and hypothesis (:data:`THIRD_PARTY_WARNINGS`) from
failing a project that turns warnings into errors.

Installed with the package, pytest loads it through the ``pytest11`` entry point
``energycrf`` (``-p no:energycrf`` switches it off). From a source tree that is on
``sys.path`` but not installed, load it by module: ``pytest -p energycrf.testing.pytest_plugin``
(not together with the installed entry point: pytest refuses one module registered under
two names). The hooks are idempotent, so a project that registers the module itself as well
(as this repository's ``tests/conftest.py`` does when neither route loaded it) is safe.
"""

from __future__ import annotations

import pytest

GPU_MARKER = "gpu: needs a CUDA device; skipped when none is available"

#: Deprecation warnings raised inside third-party code that the suites run, not in a user's:
#: torch 2.13 scripts its forward-mode AD decompositions on first use (``torch.func.jvp`` and
#: ``hessian``, which the checks call), and hypothesis imports libcst (through
#: mypy_extensions) to print a failing example. Under ``-W error`` or ``filterwarnings = error``
#: they would fail the checks or abort the session; these filters are added after the
#: project's own, so they win only for these two messages.
THIRD_PARTY_WARNINGS = (
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning",
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", GPU_MARKER)
    for line in THIRD_PARTY_WARNINGS:
        if line not in config.getini("filterwarnings"):
            config.addinivalue_line("filterwarnings", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return  # torch is imported only where a gpu test asks for it
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
