"""Old import paths (before issue 20's layout) keep working for one release, as the same objects.

A moved module imported by its old name is the new module object (no second copy of any
class) and warns with a ``DeprecationWarning`` naming the new path; ``energycrf.ldm`` and
``energycrf.ldm.pretrained`` are public names and do not warn.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import energycrf as ec
import energycrf.apps.ldm
import energycrf.learned
import energycrf.solvers
from energycrf import _compat

LDM_DIR = Path(energycrf.apps.ldm.__file__).parent
LDM_SUBMODULES = sorted(p.stem for p in LDM_DIR.glob("*.py") if p.stem != "__init__")
OLD_MODULES = {**_compat.MOVED_MODULES,
               **{f"energycrf.ldm.{sub}": f"energycrf.apps.ldm.{sub}" for sub in LDM_SUBMODULES}}
DEPRECATED = sorted(set(OLD_MODULES) - _compat.PUBLIC_ALIASES)
MOVED_NAMES = ["LatentCRF", "CompatibilityNetwork", "Unrolled", "Staged", "ImplicitDifferentiationWarning",
               "conjugate_gradient"]


def _forget(monkeypatch, *names):
    """Drop old names from sys.modules for this test (put back afterwards) so the finder runs again."""
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_every_ldm_module_has_an_old_name():
    assert {"train", "evaluate", "demo", "pretrained", "captions", "data"} <= set(LDM_SUBMODULES)
    assert all(_compat.new_name(old) == new for old, new in OLD_MODULES.items())
    assert _compat.new_name("energycrf.solvers.base") is None and _compat.new_name("energycrf.ldmx") is None


@pytest.mark.parametrize("old", DEPRECATED)
def test_old_module_path_warns_and_is_the_new_module(old, monkeypatch):
    new = OLD_MODULES[old]
    _forget(monkeypatch, old)
    with pytest.warns(DeprecationWarning, match=re.escape(f"{old} moved to {new}")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert sys.modules[old] is module
    assert module.__name__ == new and module.__spec__.name == new     # its own spec, not the alias's


def test_the_warning_points_at_the_import_statement(monkeypatch):
    _forget(monkeypatch, "energycrf.ldm.train", "energycrf.losses")
    with pytest.warns(DeprecationWarning) as record:
        import energycrf.ldm.train  # noqa: F401
        from energycrf.losses import LatentDiscriminator
    assert [Path(w.filename).name for w in record] == ["test_compat.py", "test_compat.py"]
    assert LatentDiscriminator is energycrf.learned.losses.LatentDiscriminator


def test_public_ldm_names_do_not_warn(monkeypatch):
    _forget(monkeypatch, "energycrf.ldm", "energycrf.ldm.pretrained")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import energycrf.ldm
        import energycrf.ldm.pretrained
        from energycrf.ldm import pretrained
    assert energycrf.ldm is energycrf.apps.ldm
    assert pretrained is energycrf.ldm.pretrained is energycrf.apps.ldm.pretrained
    assert sys.modules["energycrf.ldm"] is energycrf.apps.ldm
    assert pretrained.ROOT.is_dir() and callable(pretrained.load_crf)


@pytest.mark.parametrize("name", MOVED_NAMES)
def test_old_solvers_names_warn_and_are_the_learned_objects(name):
    with pytest.warns(DeprecationWarning, match=re.escape(f"energycrf.learned.{name}")):
        value = getattr(energycrf.solvers, name)
    assert value is getattr(energycrf.learned, name)
    with pytest.warns(DeprecationWarning, match=re.escape(f"energycrf.solvers.{name} moved")):
        namespace: dict = {}
        exec(f"from energycrf.solvers import {name} as imported", namespace)
    assert namespace["imported"] is value
    assert name not in energycrf.solvers.__all__


def test_unknown_names_fail_as_before():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no_such_name"):
            energycrf.solvers.no_such_name  # noqa: B018
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("energycrf.ldm.no_such_module")


def test_top_level_names_point_to_the_new_places():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ec.LatentCRF is energycrf.learned.LatentCRF
        assert ec.Unrolled is energycrf.learned.Unrolled
        assert ec.losses is energycrf.learned.losses
        assert ec.learned is energycrf.learned
        from energycrf import losses
    assert losses is energycrf.learned.losses
    assert {"learned", "LatentCRF", "Unrolled", "losses"} <= set(ec.__all__)


def test_the_finder_is_first_and_installed_once():
    finders = [f for f in sys.meta_path if isinstance(f, _compat.AliasFinder)]
    assert len(finders) == 1 and sys.meta_path[0] is finders[0]
    _compat.install()
    assert sum(isinstance(f, _compat.AliasFinder) for f in sys.meta_path) == 1


def test_old_paths_first_in_a_fresh_interpreter():
    """Old names imported before the new ones: still one module object per module, one class."""
    code = textwrap.dedent("""
        import sys, warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            import energycrf.ldm.pretrained as public
        assert not caught, [str(w.message) for w in caught]
        with warnings.catch_warnings(record=True) as caught:
            import energycrf.ldm.train as old_train
            import energycrf.solvers.latent_crf as old_crf
            from energycrf.denoise import PixelDenoiser
        assert [w.category for w in caught] == [DeprecationWarning] * 3, caught
        import energycrf.apps.ldm.train, energycrf.apps.ldm.pretrained, energycrf.learned.latent_crf
        import energycrf.apps.denoise
        assert old_train is energycrf.apps.ldm.train and public is energycrf.apps.ldm.pretrained
        assert old_crf.LatentCRF is energycrf.learned.latent_crf.LatentCRF
        assert PixelDenoiser is energycrf.apps.denoise.PixelDenoiser
        ours = {id(m): m for n, m in list(sys.modules.items()) if n.startswith("energycrf")}  # an alias: same object
        files = [m.__file__ for m in ours.values() if getattr(m, "__file__", None)]
        assert len(files) == len(set(files)), "a module was executed twice"
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
