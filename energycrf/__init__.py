"""energycrf: energy-based modelling with continuous conditional random fields.

>>> import energycrf as ec
>>> E = ec.energies.Unary() + ec.energies.Pairwise(channels=4)
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _compat

# Old import paths of moved modules (energycrf.losses, energycrf.ldm.*, ...) keep working
# for one release; see energycrf/_compat.py.
_compat.install()

__version__ = "0.1.0"

# Everything imports lazily, the energies too: `import energycrf` (and so the `energycrf`
# command's --help and usage errors, energycrf/cli.py) does not import torch.
_LAZY = {
    "energies": ("energycrf.energies", None),
    "Energy": ("energycrf.energies", "Energy"),
    "solve": ("energycrf.solvers", "solve"),
    "compare_solvers": ("energycrf.solvers", "compare_solvers"),
    "LatentCRF": ("energycrf.learned.latent_crf", "LatentCRF"),
    "Unrolled": ("energycrf.learned.unrolled", "Unrolled"),
    "solvers": ("energycrf.solvers", None),
    "learned": ("energycrf.learned", None),
    "testing": ("energycrf.testing", None),
    "losses": ("energycrf.learned.losses", None),
    "integrations": ("energycrf.integrations", None),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'energycrf' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
