"""Splicing the CRF into latent diffusion samplers (paper section 4).

- :mod:`~energycrf.integrations.plan`: :class:`SplicePlan`, where the CRF replaces steps, and
  :class:`CorrectorPlan`, a few-step sampler whose final latent the CRF corrects;
- :mod:`~energycrf.integrations.schedulers`: DDIM, DPM-Solver++ and UniPC with a chosen spacing;
- :mod:`~energycrf.integrations.cost`: UNet calls counted by a hook, the CRF's cost in UNet calls;
- :mod:`~energycrf.integrations.corrector`: data and training for a corrector plan;
- :mod:`~energycrf.integrations.sampler`: a plain DDIM loop for any latent model;
- :mod:`~energycrf.integrations.diffusers`: :func:`generate` for diffusers pipelines
  (needs the ``diffusers`` extra; imported on first use);
- :mod:`~energycrf.integrations.distill`: distillation data ``(z_s, z_f, prompt_embeds)``;
- :mod:`~energycrf.integrations.bundle`: a pipeline, its CRF and the plan in one directory;
- :mod:`~energycrf.integrations.metrics`: paired measures against a teacher with bootstrap intervals.
"""

from __future__ import annotations

from .distill import DistillationShards, generate_distillation_data, load_shards, read_shard, write_shard
from .plan import CLEAN, CorrectorPlan, SplicePlan, SpliceSchedule, ddim_timesteps, plan_from_dict
from .sampler import NoiseSchedule, crf_to_target, ddim_sample, ddim_step, splice_sample, teacher_pair

__all__ = [
    "CLEAN",
    "SplicePlan",
    "SpliceSchedule",
    "CorrectorPlan",
    "plan_from_dict",
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
