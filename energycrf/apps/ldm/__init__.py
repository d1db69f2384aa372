"""A small real text-to-image latent diffusion model on Fashion-MNIST, and its evaluation.

The project trains, ships and measures this model so that LatentCRF (paper section 3,
Table 1) can be evaluated end to end offline:

- :mod:`energycrf.ldm.data`: the Fashion-MNIST reader (Debian ``dataset-fashion-mnist``);
- :mod:`energycrf.ldm.captions`: varied captions per class, with held-out templates;
- :mod:`energycrf.ldm.text`: the MiniLM sentence encoder's token states as context;
- :mod:`energycrf.ldm.train`: AutoencoderKL + UNet2DConditionModel + DDIM pipeline;
- :mod:`energycrf.ldm.classifier`: the small CNN used for Frechet features and accuracy;
- :mod:`energycrf.ldm.evaluate`: Frechet distance, class accuracy, Vendi score, ms/image
  (``energycrf evaluate``);
- :mod:`energycrf.ldm.crf_training`: LatentCRF stage 1 / stage 2 data and settings;
- :mod:`energycrf.ldm.pretrained`: the shipped pipeline, classifier and LatentCRF;
- :mod:`energycrf.ldm.demo`: the picture and the small-sample Table 1 (``energycrf demo``).

Submodules import diffusers/transformers lazily; ``import energycrf.ldm`` is cheap.
"""

from __future__ import annotations

__all__ = ["data", "captions", "text", "train", "classifier", "evaluate", "crf_training", "pretrained", "demo"]
