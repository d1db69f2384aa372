"""A small real text-to-image latent diffusion model on Fashion-MNIST, and its evaluation.

The project trains, ships and measures this model so that LatentCRF (paper section 3,
Table 1) can be evaluated end to end offline:

- :mod:`energycrf.apps.ldm.data`: the Fashion-MNIST reader (Debian ``dataset-fashion-mnist``);
- :mod:`energycrf.apps.ldm.captions`: varied captions per class, with held-out templates;
- :mod:`energycrf.apps.ldm.text`: the MiniLM sentence encoder's token states as context;
- :mod:`energycrf.apps.ldm.train`: AutoencoderKL + UNet2DConditionModel + DDIM pipeline;
- :mod:`energycrf.apps.ldm.classifier`: the small CNN used for Frechet features and accuracy;
- :mod:`energycrf.apps.ldm.evaluate`: Frechet distance, class accuracy, Vendi score, ms/image
  (``energycrf evaluate``);
- :mod:`energycrf.apps.ldm.crf_training`: LatentCRF stage 1 / stage 2 data and settings;
- :mod:`energycrf.apps.ldm.corrector`: a LatentCRF corrector for a few-step sampler
  (``energycrf train-corrector``);
- :mod:`energycrf.apps.ldm.pretrained`: the shipped pipeline, classifier and LatentCRFs;
- :mod:`energycrf.apps.ldm.demo`: the picture and the small-sample Table 1 (``energycrf demo``).

``energycrf.ldm`` and ``energycrf.ldm.pretrained`` are its public names too (the same module
objects, no warning): ``from energycrf.ldm import pretrained``. Submodules import
diffusers/transformers lazily; ``import energycrf.apps.ldm`` is cheap.
"""

from __future__ import annotations

__all__ = ["data", "captions", "text", "train", "classifier", "evaluate", "crf_training", "corrector", "pretrained", "demo"]
