"""Old import paths of moved modules, kept working for one release (issue 20's new layout).

One mechanism for every moved module: a meta-path finder (:class:`AliasFinder`, installed
first in ``sys.meta_path`` by ``import energycrf``) maps an old module name to its new
module. Importing the old name imports the new module and puts the *same* module object
into ``sys.modules`` under the old name, so classes are not duplicated (``isinstance``,
pickling and ``load_state_dict`` see one class), and warns with a ``DeprecationWarning``
that names the new path. For names that were re-exported by a package
(``from energycrf.solvers import LatentCRF``), :func:`moved_attributes` builds the
package's module ``__getattr__``, with the same warning.

``energycrf.ldm`` and ``energycrf.ldm.pretrained`` are fixed public names of the shipped
text-to-image app (``from energycrf.ldm import pretrained``): they alias
``energycrf.apps.ldm`` and ``energycrf.apps.ldm.pretrained`` without a warning. Since
``energycrf.ldm`` *is* ``energycrf.apps.ldm``, ``from energycrf.ldm import train`` finds the
new submodule directly and does not warn; the dotted forms ``import energycrf.ldm.train``
and ``from energycrf.ldm.train import ...`` do. The package itself imports none of the old
names (``tests/test_layout.py`` checks it).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["MOVED_MODULES", "MOVED_PACKAGES", "PUBLIC_ALIASES", "AliasFinder", "new_name", "moved_attributes",
           "install"]

#: old module name -> new module name (one module each)
MOVED_MODULES: dict[str, str] = {
    "energycrf.solvers.latent_crf": "energycrf.learned.latent_crf",
    "energycrf.solvers.unrolled": "energycrf.learned.unrolled",
    "energycrf.losses": "energycrf.learned.losses",
    "energycrf.demo": "energycrf.apps.energy_demo",
    "energycrf.denoise": "energycrf.apps.denoise",
    "energycrf.photographs": "energycrf.apps.photographs",
    "energycrf.solvers.cli": "energycrf.apps.compare_solvers",
    "energycrf.integrations.cli": "energycrf.apps.distill_data",
}

#: old package name -> new package name (the package and every module under it)
MOVED_PACKAGES: dict[str, str] = {
    "energycrf.ldm": "energycrf.apps.ldm",
}

#: old names that stay public: aliases without a warning
PUBLIC_ALIASES: frozenset[str] = frozenset({"energycrf.ldm", "energycrf.ldm.pretrained"})


def new_name(old: str) -> str | None:
    """The module that the old name ``old`` now points to, or ``None`` if it did not move."""
    if old in MOVED_MODULES:
        return MOVED_MODULES[old]
    for old_package, new_package in MOVED_PACKAGES.items():
        if old == old_package or old.startswith(old_package + "."):
            return new_package + old[len(old_package):]
    return None


def _warn_moved(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(f"{old} moved to {new}; import it from there (the old path goes in the next release)",
                  DeprecationWarning, stacklevel=stacklevel + 1)


class AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as the new module object (no second copy).

    The import system calls :meth:`create_module` (which imports the new module and
    warns) and then :meth:`exec_module`; the latter only puts back the module's own
    ``__spec__``, which the import system has just replaced by the alias's.
    """

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None):
        new = new_name(fullname)
        if new is None or importlib.util.find_spec(new) is None:
            return None        # not moved, or no such module: the usual ModuleNotFoundError
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = new_name(spec.name)
        if spec.name not in PUBLIC_ALIASES:
            # warnings skips the import system's own frames: the warning points at the import
            _warn_moved(spec.name, new, stacklevel=2)
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        if spec is not None and spec.loader is self and spec.loader_state is not None:
            module.__spec__ = spec.loader_state


def moved_attributes(module_name: str, moved: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for re-exported names that moved: ``{name: new module}``.

    ``module.name`` (or ``from module import name``) warns and returns ``new_module.name``;
    any other missing name raises ``AttributeError`` as usual.
    """

    def __getattr__(name: str) -> Any:
        target = moved.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        _warn_moved(f"{module_name}.{name}", f"{target}.{name}", stacklevel=2)
        return getattr(importlib.import_module(target), name)

    return __getattr__


def install() -> None:
    """Put the finder first in ``sys.meta_path`` (once; ``import energycrf`` calls this).

    First, so that a moved name under a package's own path (``energycrf.ldm.train`` inside
    ``energycrf/apps/ldm``) is never loaded a second time by the path finder.
    """
    if not any(isinstance(finder, AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())
