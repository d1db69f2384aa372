"""Splicing the CRF into latent diffusion samplers (paper section 4).

- :mod:`~energycrf.integrations.plan`: :class:`SplicePlan`, where the CRF replaces steps;
- :mod:`~energycrf.integrations.sampler`: a plain DDIM loop for any latent model;
- :mod:`~energycrf.integrations.diffusers`: :func:`generate` for diffusers pipelines
  (needs the ``diffusers`` extra; imported on first use);
- :mod:`~energycrf.integrations.distill`: distillation data ``(z_s, z_f, prompt_embeds)``;
- :mod:`~energycrf.integrations.bundle`: a pipeline, its CRF and the plan in one directory;
- :mod:`~energycrf.integrations.metrics`: paired measures against a teacher with bootstrap intervals.
"""

from __future__ import annotations

from .distill import DistillationShards, generate_distillation_data, load_shards, read_shard, write_shard
from .plan import CLEAN, SplicePlan, SpliceSchedule, ddim_timesteps
from .sampler import NoiseSchedule, crf_to_target, ddim_sample, ddim_step, splice_sample, teacher_pair

__all__ = [
    "CLEAN",
    "SplicePlan",
    "SpliceSchedule",
    "ddim_timesteps",
    "NoiseSchedule",
    "crf_to_target",
    "ddim_sample",
    "ddim_step",
    "splice_sample",
    "teacher_pair",
    "DistillationShards",
    "generate_distillation_data",
    "load_shards",
    "read_shard",
    "write_shard",
]
