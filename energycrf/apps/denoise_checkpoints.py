"""The shipped denoisers' names: the noise levels and models with a checkpoint, and the file
that describes one (light: the command checks its arguments against these without torch)."""

from __future__ import annotations

__all__ = ["SIGMAS", "MODELS", "DEFAULT_MODEL", "DEFAULT_SIGMA", "DENOISER_JSON", "KIND_MODELS"]

#: noise levels (0-255 scale) with a shipped checkpoint
SIGMAS = (15, 25, 50)
#: the shipped models: the staged Field of Experts, one FoE energy minimised by a solver, LatentCRF
MODELS = ("staged", "foe", "latentcrf")
DEFAULT_MODEL = "staged"
DEFAULT_SIGMA = 25
#: a checkpoint's ``kind`` (its denoiser.json) -> the model's name in ``--model``
KIND_MODELS = {"staged_foe": "staged", "foe_energy": "foe", "latent_crf": "latentcrf"}
DENOISER_JSON = "denoiser.json"
