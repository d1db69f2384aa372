"""The shipped Fashion-MNIST model: pipeline, evaluation classifier and LatentCRF.

Layout of ``energycrf/pretrained/ldm-fashion/``:

- ``pipeline/``: the ``MiniLMStableDiffusionPipeline`` (``save_pretrained``, safetensors;
  VAE, UNet, DDIM scheduler; the MiniLM text encoder comes from its own wheel);
- ``classifier/``: the evaluation CNN (:mod:`energycrf.apps.ldm.classifier`);
- ``latent-crf/``: the LatentCRF trained for this pipeline (stage 1 + stage 2).

Reproduce with ``scripts/train_ldm.py``, ``scripts/train_classifier.py`` and
``scripts/train_latent_crf_fashion.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "pretrained" / "ldm-fashion"


def pipeline_dir() -> Path:
    return ROOT / "pipeline"


def classifier_dir() -> Path:
    return ROOT / "classifier"


def crf_dir() -> Path:
    return ROOT / "latent-crf"


def load_pipeline(path: str | os.PathLike | None = None):
    """The shipped pipeline (or the one at ``path``), float32, progress bar off."""
    from energycrf.apps.ldm.train import load_pipeline as _load

    return _load(path if path is not None else pipeline_dir())


def load_classifier(path: str | os.PathLike | None = None):
    from energycrf.apps.ldm.classifier import load_classifier as _load

    return _load(path if path is not None else classifier_dir())


def load_crf(path: str | os.PathLike | None = None):
    """The shipped ``ec.LatentCRF`` (or the one at ``path``), eval mode."""
    from energycrf.learned.latent_crf import LatentCRF

    p = Path(path) if path is not None else crf_dir()
    if not p.exists():
        raise FileNotFoundError(f"no LatentCRF checkpoint at {p}; train one with scripts/train_latent_crf_fashion.py")
    return LatentCRF.from_pretrained(p).eval()
