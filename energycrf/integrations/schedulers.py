"""The training-free samplers a CRF is measured against and spliced into (diffusers schedulers).

:func:`make_scheduler` builds DDIM, DPM-Solver++ (2M, the ``dpmsolver++`` algorithm) or
UniPC from a pipeline's scheduler configuration with a chosen timestep spacing. The spacing
matters: a scheduler made ``from_config`` of a Stable Diffusion DDIM configuration inherits
``timestep_spacing="leading"``, whose few-step grids stop short of ``T - 1`` (6 steps:
853 ... 143 with ``steps_offset=1``), while ``"trailing"`` starts at ``T - 1``
(999 ... 166). Few-step multistep solvers are compared in their best configuration,
``"trailing"``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping

from .plan import SAMPLERS

__all__ = ["SAMPLERS", "make_scheduler", "quiet_scheduler_warnings"]

_SPACINGS = ("leading", "trailing", "linspace")


def make_scheduler(config: Mapping, sampler: str, spacing: str | None = None):
    """A fresh ``sampler`` scheduler (``"ddim"``, ``"dpmpp"``, ``"unipc"``) from ``config``.

    ``spacing`` overrides the configuration's ``timestep_spacing`` (``None`` keeps it).
    DPM-Solver++ is second order (``solver_order=2``), UniPC keeps diffusers' defaults
    (``bh2``, order 2); both end on sigma 0 (a clean latent).
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if spacing is not None and spacing not in _SPACINGS:
        raise ValueError(f"spacing must be one of {_SPACINGS} or None, got {spacing!r}")
    over = {} if spacing is None else {"timestep_spacing": spacing}
    if sampler == "ddim":
        return DDIMScheduler.from_config(config, **over)
    if sampler == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2, **over)
    return UniPCMultistepScheduler.from_config(config, **over)


@contextlib.contextmanager
def quiet_scheduler_warnings():
    """Silence numpy 2's copy-keyword ``DeprecationWarning`` from diffusers' multistep ``set_timesteps``.

    DPM-Solver and UniPC call ``np.array`` on a tensor when they set their timesteps; the
    warning is about diffusers' code, not the caller's, and is raised on every call.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        yield
