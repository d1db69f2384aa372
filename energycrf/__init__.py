"""energycrf: energy-based modelling with continuous conditional random fields.

>>> import energycrf as ec
>>> E = ec.energies.Unary() + ec.energies.Pairwise(channels=4)
"""

from __future__ import annotations

import importlib
from typing import Any

from . import energies
from .energies import Energy

__version__ = "0.1.0"

# Solvers, the learned layer and integrations import lazily: `import energycrf` stays light.
_LAZY = {
    "solve": ("energycrf.solvers", "solve"),
    "compare_solvers": ("energycrf.solvers", "compare_solvers"),
    "LatentCRF": ("energycrf.solvers.latent_crf", "LatentCRF"),
    "Unrolled": ("energycrf.solvers.unrolled", "Unrolled"),
    "solvers": ("energycrf.solvers", None),
    "testing": ("energycrf.testing", None),
    "losses": ("energycrf.losses", None),
    "integrations": ("energycrf.integrations", None),
}

__all__ = ["Energy", "energies", "__version__", *_LAZY]


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
