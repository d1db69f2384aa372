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


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): imports for annotations only."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _runtime_nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imported_names(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterable[str]:
    for node in _runtime_nodes(tree):
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

    Counts imports at any depth (inside functions and ``if`` blocks too; not those under
    ``if TYPE_CHECKING:``, which are for annotations only), resolves relative
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


# --- layers and cycles ---------------------------------------------------------------------

#: Each layer of the library and the layers it may import (besides itself, the package root and
#: the root's helpers ``energycrf._compat`` and ``energycrf.io``). docs/layout.md shows the same table.
LAYERS: dict[str, set[str]] = {
    "energycrf.energies": set(),
    "energycrf.solvers": {"energycrf.energies"},
    "energycrf.testing": {"energycrf.energies", "energycrf.solvers"},
    "energycrf.learned": {"energycrf.energies", "energycrf.solvers"},
    "energycrf.training": {"energycrf.energies", "energycrf.solvers", "energycrf.learned"},
    "energycrf.integrations": {"energycrf.energies", "energycrf.solvers", "energycrf.learned",
                               "energycrf.training"},
}
ROOT_HELPERS = {"energycrf", "energycrf._compat", "energycrf.io"}


def _layer(module: str) -> str | None:
    return next((layer for layer in LAYERS if _within(module, layer)), None)


def layer_violations(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """``{module: the imports of a layer it may not import}`` over the library's layers."""
    found = {}
    for module, imported in graph.items():
        layer = _layer(module)
        if layer is None:
            continue
        allowed = LAYERS[layer] | {layer}
        bad = sorted(n for n in imported if n not in ROOT_HELPERS and _layer(n) not in allowed)
        if bad:
            found[module] = bad
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_every_library_module_belongs_to_a_layer():
    homeless = sorted(m for m in GRAPH if _layer(m) is None and not _within(m, APPS)
                      and m not in ROOT_HELPERS | APP_IMPORTERS)
    assert not homeless, f"modules outside the layers of docs/layout.md: {homeless}"


def test_each_layer_imports_only_the_layers_below():
    violations = layer_violations(GRAPH)
    assert not violations, f"imports against the layer order: {violations}"


def test_no_import_cycle():
    assert not import_cycles(GRAPH), f"import cycles: {import_cycles(GRAPH)}"


def test_the_layer_and_cycle_checks_catch_offenders(tmp_path):
    """A lazy solver import in an energy (the review's energies.base -> fused circle, through a
    function) and a type-only import (not a runtime dependency) in a tree of their own."""
    pkg = tmp_path / PACKAGE
    for sub in ("energies", "solvers"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "energies" / "base.py").write_text("def f():\n    from .fused import g\n")
    (pkg / "energies" / "fused.py").write_text("from .base import f\n")
    (pkg / "energies" / "term.py").write_text("def h():\n    from ..solvers import step\n")
    (pkg / "solvers" / "step.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..energies.term import h\n")
    graph = import_graph(root=tmp_path)
    assert import_cycles(graph) == [["energycrf.energies.base", "energycrf.energies.fused"]]
    assert layer_violations(graph) == {"energycrf.energies.term": ["energycrf.solvers.step"]}
    assert graph["energycrf.solvers.step"] == set()  # the type-only import is not counted
