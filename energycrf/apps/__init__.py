"""Applications built on the library; the library never imports them.

- :mod:`energycrf.apps.ldm`: the shipped text-to-image latent diffusion model on
  Fashion-MNIST: its training, evaluation (Table 1), demo and pretrained loading
  (``energycrf demo``, ``energycrf evaluate``); also importable as ``energycrf.ldm``;
- :mod:`energycrf.apps.denoise`: grayscale denoising with the shipped checkpoints
  (``energycrf denoise``);
- :mod:`energycrf.apps.energy_demo`: an energy on a real photograph
  (``energycrf energy-demo``);
- :mod:`energycrf.apps.compare_solvers`: every solver on one problem
  (``energycrf compare-solvers``);
- :mod:`energycrf.apps.distill_data`: stage-2 distillation shards from a local
  diffusers pipeline (``energycrf distill-data``);
- :mod:`energycrf.apps.photographs`: the scikit-image photographs and noise protocol the
  apps share.

Each command module has ``add_arguments`` and ``run``; ``energycrf/cli.py`` routes to them.
A command module imports nothing heavy at its top (``--help`` and usage errors answer
without torch): ``denoise`` and ``evaluate``, whose modules hold torch models, have their
command in :mod:`energycrf.apps.denoise_command` and :mod:`energycrf.apps.ldm.evaluate_command`.
:mod:`energycrf.apps._command` holds what the commands share (argument types, checks of
inputs and outputs before any work, atomic writes, the thread rule, the progress bar).
"""
