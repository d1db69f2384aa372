"""The package's import structure, read from the source (every import statement, at any depth:
inside functions and ``if TYPE_CHECKING`` blocks too): the energies import no solver module,
and no module of the energies or the solvers imports itself through others (an import circle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "energycrf"


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package)}`` of every module of ``energycrf``."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (path, package)
    return modules


def _imports(name: str, path: Path, package: bool, modules) -> set[str]:
    """The modules of ``energycrf`` that ``name`` imports, each as the module an import statement
    names (``from .a import b`` names ``a``, and ``a.b`` when that is a module); not the parent
    packages that Python runs on the way."""
    here = name.split(".") if package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, package, modules) for name, (path, package) in modules.items()}


def _cycle_through(graph: dict[str, set[str]], start: str, within: str) -> list[str] | None:
    """An import path from ``start`` back to itself through modules under ``within``, or ``None``."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph[node]):
            if not nxt.startswith(within):
                continue
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_the_reader_finds_imports_at_any_depth(tmp_path):
    """The reader sees relative and absolute imports, in functions too (the lazy imports)."""
    source = tmp_path / "mod.py"
    source.write_text("from .fused import shared_convolutions\n"
                      "def f():\n    from ..solvers.start import quadratic_start\n    import energycrf.solvers.base\n")
    modules = {"energycrf.energies.mod": None, "energycrf.energies.fused": None,
               "energycrf.solvers.start": None, "energycrf.solvers.base": None}
    assert _imports("energycrf.energies.mod", source, False, modules) == {
        "energycrf.energies.fused", "energycrf.solvers.start", "energycrf.solvers.base"}


def test_the_energies_import_no_solver_module():
    graph = _graph()
    energies = [name for name in graph if name.startswith("energycrf.energies")]
    assert "energycrf.energies.energy" in energies and len(energies) > 10
    wrong = {name: sorted(t for t in graph[name] if t.startswith("energycrf.solvers")) for name in energies}
    assert not any(wrong.values()), {k: v for k, v in wrong.items() if v}


@pytest.mark.parametrize("package", ["energycrf.energies", "energycrf.solvers"])
def test_no_import_circles(package):
    graph = _graph()
    names = [name for name in graph if name.startswith(package)]
    assert names
    cycles = [cycle for cycle in (_cycle_through(graph, name, package) for name in names) if cycle]
    assert not cycles, " | ".join(" -> ".join(c) for c in cycles)
