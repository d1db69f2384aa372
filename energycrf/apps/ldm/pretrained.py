"""The shipped Fashion-MNIST model: pipeline, evaluation classifier and LatentCRF.

Layout of ``energycrf/pretrained/ldm-fashion/``:

- ``pipeline/``: the ``MiniLMStableDiffusionPipeline`` (``save_pretrained``, safetensors;
  VAE, UNet, DDIM scheduler; the MiniLM text encoder comes from its own wheel);
- ``classifier/``: the evaluation CNN (:mod:`energycrf.apps.ldm.classifier`);
- ``latent-crf/``: the LatentCRF trained for this pipeline (stage 1 + stage 2), for the
  paper's DDIM splice (its ``plan.json``);
- ``correctors/NAME/``: LatentCRF correctors of few-step samplers (``energycrf
  train-corrector``), each with its plan (``plan.json``) and its training record.

:func:`crf_names` lists the shipped CRFs; :func:`load_crf` loads one by name (or from a
path) with its recorded plan as ``crf.plan``, which
:func:`energycrf.integrations.diffusers.generate` follows when it is given no plan.

Reproduce with ``scripts/train_ldm.py``, ``scripts/train_classifier.py`` and
``scripts/train_latent_crf_fashion.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "pretrained" / "ldm-fashion"
CORRECTORS = ROOT / "correctors"
#: The shipped CRF of the paper's DDIM splice.
SPLICE_CRF = "latent-crf"
#: The CRF that :func:`load_crf` loads without a name: the larger corrector of 11 UniPC (trailing)
#: calls, which beats DPM-Solver++ and UniPC with 12 and with 13 calls on the paired teacher
#: measures and the Frechet distance on three seed sets (docs/payoff.md).
DEFAULT_CRF = "unipc-trailing-11-large"


def pipeline_dir() -> Path:
    return ROOT / "pipeline"


def classifier_dir() -> Path:
    return ROOT / "classifier"


def corrector_names() -> list[str]:
    """The shipped correctors (``correctors/NAME/``), sorted."""
    if not CORRECTORS.is_dir():
        return []
    return sorted(d.name for d in CORRECTORS.iterdir() if (d / "config.json").is_file())


def crf_names() -> list[str]:
    """Every shipped LatentCRF: the DDIM-splice CRF first, then the correctors."""
    return [SPLICE_CRF, *corrector_names()]


def crf_dir(name: str | None = None) -> Path:
    """The directory of the shipped CRF ``name`` (default :data:`DEFAULT_CRF`)."""
    name = DEFAULT_CRF if name is None else name
    if name == SPLICE_CRF:
        return ROOT / SPLICE_CRF
    if name not in corrector_names():
        raise ValueError(f"no shipped LatentCRF named {name!r}; shipped: {crf_names()}")
    return CORRECTORS / name


def load_pipeline(path: str | os.PathLike | None = None):
    """The shipped pipeline (or the one at ``path``), float32, progress bar off."""
    from energycrf.apps.ldm.train import load_pipeline as _load

    return _load(path if path is not None else pipeline_dir())


def load_classifier(path: str | os.PathLike | None = None):
    from energycrf.apps.ldm.classifier import load_classifier as _load

    return _load(path if path is not None else classifier_dir())


def load_crf(path: str | os.PathLike | None = None):
    """A shipped ``ec.LatentCRF`` by name (see :func:`crf_names`; ``None``: the default), or the one at ``path``.

    Eval mode, with ``crf.plan`` the plan recorded beside it (``None`` when it records none).
    """
    from energycrf.integrations.bundle import load_crf as _load

    if path is None or (isinstance(path, str) and path in crf_names()):
        p = crf_dir(path)
    else:
        p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no LatentCRF checkpoint at {p} (and no shipped CRF of that name: {crf_names()}); "
                                "train one with scripts/train_latent_crf_fashion.py or energycrf train-corrector")
    return _load(p)
