"""Train a LatentCRF for your own latent diffusion pipeline (stage 1, stage 2, or both).

    energycrf train --stage 1 --pipeline ./my-sd --images ./photos --out ./crf
    energycrf distill-data --pipeline ./my-sd --prompts prompts.txt --out ./shards
    energycrf train --stage 1,2 --pipeline ./my-sd --images ./photos --shards ./shards --out ./crf
    torchrun --nproc_per_node 4 -m energycrf train ...        # one process per GPU

- **Stage 1** (paper 3.4): clean latents ``z`` of your data, either ``--images DIR`` (encoded
  by the pipeline's VAE, times its scaling factor, after resizing and centre-cropping to the
  pipeline's resolution, RGB or grey as the VAE takes them) or ``--latents DIR``
  (safetensors files holding ``latents`` as the UNet sees them, ``[N, C, h, w]`` or
  ``[C, h, w]``, and optionally ``prompt_embeds``), noised as ``z~ = sqrt(a) z + sqrt(1 - a) n``
  with ``a = abar(t)``, ``t`` drawn within ``--noise-window`` timesteps of the plan's splice
  point; loss ``L_NT-F = L_NT + L_SCE(D(M(z~)), 1)`` (eq. 13) against the latent
  discriminator ``D`` (eq. 14; ``--adv-weight 0``: ``L_NT`` alone). An image's caption is
  ``NAME.txt`` beside it, else its ``text`` in ``metadata.jsonl`` (``file_name``, ``text``),
  else ``--caption``; captions are encoded by the pipeline's own text encoder.
- **Stage 2** (paper 3.5): ``L_DT = ||z_f - M(z_s)||_2`` on the shards of ``energycrf
  distill-data`` (``--shards DIR``), from stage 1's weights (``--stage 1,2``) or ``--init``.
  The plan is the shards' plan; a plan given with ``--plan`` or ``--pre-steps`` ... must be it.

``--out`` receives the CRF (``LatentCRF.from_pretrained(out)``), ``plan.json`` (what
``generate(pipe, crf)`` runs), ``training.json`` (the command with every option, the data,
the settings, the final losses), ``log.jsonl`` (one JSON record per logged step, with its
stage) and ``loss.png``; ``--out/checkpoints`` the periodic checkpoints, from which
``--resume`` continues exactly (the same weights as an uninterrupted run on the same device
and threads). An ``--out`` with results is refused unless ``--resume``.
"""

from __future__ import annotations

import argparse

from .train_options import add_arguments, check_arguments

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    files = check_arguments(args)
    from .train_run import train

    return train(args, files)
