"""The package layout (issue 20): the library never imports the applications, nor an old path.

``import_graph()`` reads every module of ``energycrf`` with ``ast`` (imports at any depth,
inside functions too; relative imports resolved) and returns
``{module: set of the energycrf modules it imports}``; the checks below, and later ones
(no import cycle, layer order), are questions about that graph.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

from energycrf import _compat

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "energycrf"
APPS = "energycrf.apps"
# modules outside energycrf/apps that may import the apps: the command-line router
APP_IMPORTERS = {"energycrf.cli", "energycrf.__main__"}


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    """``energycrf/solvers/base.py`` -> ``energycrf.solvers.base``; a package's ``__init__`` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package: str = PACKAGE, root: Path = REPO_ROOT) -> dict[str, Path]:
    """Every module of ``package``: ``{dotted name: file}``."""
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]      # the package the import is relative to
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def _imported_names(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            source = (_resolve_relative(module, is_package, node.level, node.module) if node.level
                      else node.module)
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                # `from pkg import sub` imports the module pkg.sub (also an old alias such as
                # `from energycrf import demo`); `from mod import name` imports mod
                if candidate in known or _compat.new_name(candidate) is not None:
                    yield candidate
                else:
                    yield source
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _is_import_module(node.func)):
            yield node.args[0].value


def _is_import_module(func: ast.expr) -> bool:
    return ((isinstance(func, ast.Attribute) and func.attr == "import_module")
            or (isinstance(func, ast.Name) and func.id == "import_module"))


def import_graph(package: str = PACKAGE, root: Path = REPO_ROOT) -> dict[str, set[str]]:
    """``{module: set of modules of package it imports}`` over every module of ``package``.

    Counts imports at any depth (inside functions and ``if`` blocks too), resolves relative
    imports, and reads ``importlib.import_module("literal")``. ``from pkg import name``
    counts as importing ``pkg.name`` when that is a module (or an old alias of one), else as
    importing ``pkg``. Names that are not modules of the package stay as written (an old
    alias such as ``energycrf.ldm.train``), so a check can look for them.
    """
    modules = package_modules(package, root)
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[name] = {imported for imported in _imported_names(tree, name, is_package, known)
                       if imported == package or imported.startswith(package + ".")}
    return graph


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _targets_apps(name: str) -> bool:
    """``name`` is an app module, directly or through an old alias (``energycrf.ldm``, ``energycrf.demo``)."""
    new = _compat.new_name(name)
    return _within(name, APPS) or (new is not None and _within(new, APPS))


def _script_graph(folder: str) -> dict[str, set[str]]:
    graph = {}
    for path in sorted((REPO_ROOT / folder).glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[f"{folder}/{path.name}"] = set(_imported_names(tree, path.stem, False, set(package_modules())))
    return graph


GRAPH = import_graph()


def test_the_graph_reads_imports_at_any_depth():
    # sanity: lazy imports inside functions and relative imports are in the graph
    assert "energycrf.learned.losses" in GRAPH["energycrf.training.trainer"]          # inside a method
    assert "energycrf.solvers.api" in GRAPH["energycrf.learned.unrolled"]             # relative, ..solvers.api
    assert "energycrf.energies.energy" in GRAPH["energycrf.energies.pairwise"]        # relative, .energy
    assert "energycrf.apps.photographs" in GRAPH["energycrf.apps.compare_solvers"]    # inside run()
    assert {"energycrf.learned", "energycrf.apps", "energycrf.apps.ldm.pretrained"} <= set(GRAPH)


def test_resolve_relative_imports():
    assert _resolve_relative("energycrf.learned.unrolled", False, 2, "solvers.api") == "energycrf.solvers.api"
    assert _resolve_relative("energycrf.learned", True, 1, "latent_crf") == "energycrf.learned.latent_crf"
    assert _resolve_relative("energycrf.learned.latent_crf", False, 2, None) == "energycrf"


def test_library_does_not_import_the_apps():
    offenders = {module: sorted(filter(_targets_apps, imported)) for module, imported in GRAPH.items()
                 if not _within(module, APPS) and module not in APP_IMPORTERS}
    offenders = {module: names for module, names in offenders.items() if names}
    assert not offenders, f"core modules import the applications: {offenders}"


@pytest.mark.parametrize("folder", [None, "scripts", "benchmarks"])
def test_nothing_imports_an_old_path(folder):
    graph = GRAPH if folder is None else _script_graph(folder)
    offenders = {module: sorted(n for n in imported if _compat.new_name(n) is not None)
                 for module, imported in graph.items()}
    offenders = {module: names for module, names in offenders.items() if names}
    assert not offenders, f"old (deprecated) import paths in use: {offenders}"


def test_the_checks_catch_an_offender(tmp_path):
    """The graph sees an app import and an old path in a core module (a function-level import)."""
    pkg = tmp_path / PACKAGE
    (pkg / "solvers").mkdir(parents=True)
    (pkg / "apps").mkdir()
    for init in (pkg / "__init__.py", pkg / "solvers" / "__init__.py", pkg / "apps" / "__init__.py"):
        init.write_text("")
    (pkg / "apps" / "denoise.py").write_text("")
    (pkg / "solvers" / "bad.py").write_text(
        "def f():\n    from ..apps import denoise\n    from energycrf import demo\n    import energycrf.ldm.train\n")
    graph = import_graph(root=tmp_path)
    assert graph["energycrf.solvers.bad"] == {"energycrf.apps.denoise", "energycrf.demo", "energycrf.ldm.train"}
    assert all(_targets_apps(name) for name in graph["energycrf.solvers.bad"])
