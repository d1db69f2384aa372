"""Distillation data for stage 2 (paper section 3.5): ``(z_s, z_f, prompt embeddings)``.

The CRF is distilled with ``L_DT = || z_f - M(z_s) ||_2``: ``z_s`` is the latent at the
plan's splice timestep ``t_s`` and ``z_f`` what the CRF should output there. This module
runs a diffusers pipeline (DDIM teacher, classifier-free guidance as configured) along a
teacher trajectory through ``t_s`` and writes the pairs into sharded safetensors files.

Teacher trajectories (:meth:`SpliceSchedule.teacher_timesteps`):

- ``teacher="plan"`` (default): the plan's pre-CRF steps (31 of 40) to ``t_s``, then every
  step of the post-CRF grid below ``t_s`` (201, 181, ..., 1 with the SD 1.5 scheduler):
  ``z_s`` is distributed exactly as the latent the CRF meets at inference; 42 UNet calls.
- ``teacher="full"``: the whole post-CRF schedule (50 steps); ``z_s`` is the latent entering
  step 40 of 50, the paper's data (section 4, "Training uses ... step 40 of 50").

``z_f`` follows ``plan.crf_output``: the final latent (``"clean"``) or the teacher's latent
at the first post-CRF timestep (``"post"``).

Shard format (one file per rank and shard index, ``<out>/rank{r:03d}-of-{w:03d}-{k:05d}.safetensors``):

=================== =================== ================================================
key                 shape               meaning
=================== =================== ================================================
``z_s``             ``[N, C, H, W]``    latent at the splice timestep (CRF input)
``z_f``             ``[N, C, H, W]``    target (CRF output)
``prompt_embeds``   ``[N, L, D]``       positive prompt token embeddings (the CRF's ``c``)
``pooled_prompt_embeds`` ``[N, D']``    optional: SDXL's pooled embedding
=================== =================== ================================================

float32 by default. The safetensors metadata holds one key, ``"energycrf"``, a JSON object
with ``format`` (``"energycrf.distill/1"``), ``plan`` (:meth:`SplicePlan.to_dict`),
``teacher``, ``timesteps`` (``teacher``, ``splice``, ``target``: -1 = clean, ``post``),
``model`` (pipeline class, name or path, scheduler configuration), ``guidance_scale``,
``prompts``, ``prompt_indices``, ``seeds``, ``rank``, ``world_size``, ``shard``, ``count``.
Sample ``i`` of the prompt list uses the generator seed ``seed + i``, whatever the rank or
resumption, so the data set is reproducible.

Under ``torchrun`` or ``accelerate launch`` (both set ``RANK`` and ``WORLD_SIZE``) each rank
takes the prompts ``i`` with ``i % world_size == rank`` and writes its own shards; no
process group is needed. Shards are written atomically (temporary file, then
``os.replace``); a rerun skips complete shards whose metadata match (resumable).

Reading: :class:`DistillationShards` (a ``torch.utils.data.Dataset``) or :func:`load_shards`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from ..io import save_safetensors
from .plan import CLEAN, SplicePlan

__all__ = [
    "FORMAT",
    "generate_distillation_data",
    "write_shard",
    "read_shard",
    "load_shards",
    "DistillationShards",
    "rank_and_world_size",
]

FORMAT = "energycrf.distill/1"
REQUIRED_KEYS = ("z_s", "z_f", "prompt_embeds")


def rank_and_world_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` from the arguments, else ``RANK``/``WORLD_SIZE`` (torchrun, accelerate)."""
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if isinstance(rank, bool) or isinstance(world_size, bool):
        raise TypeError("rank and world_size must be ints")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


def write_shard(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict) -> Path:
    """Write one shard atomically (``path.tmp`` then ``os.replace``); checks keys and shapes."""
    for key in REQUIRED_KEYS:
        if key not in tensors:
            raise ValueError(f"a shard needs the keys {REQUIRED_KEYS}; missing {key!r}")
    n = tensors["z_s"].shape[0]
    if tensors["z_s"].dim() != 4 or tensors["z_f"].shape != tensors["z_s"].shape:
        raise ValueError(
            f"z_s and z_f must both be [N, C, H, W] of one shape, got {tuple(tensors['z_s'].shape)} "
            f"and {tuple(tensors['z_f'].shape)}"
        )
    for key, t in tensors.items():
        if t.shape[0] != n:
            raise ValueError(f"{key} has {t.shape[0]} rows, z_s has {n}")
    if tensors["prompt_embeds"].dim() != 3:
        raise ValueError(f"prompt_embeds must be [N, L, D], got {tuple(tensors['prompt_embeds'].shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = {"energycrf": json.dumps({"format": FORMAT, **metadata, "count": int(n)}, default=str)}
    save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


def _read_metadata(f) -> dict:
    raw = (f.metadata() or {}).get("energycrf")
    if raw is None:
        raise ValueError("not an energycrf distillation shard (no 'energycrf' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"unknown shard format {meta.get('format')!r}; expected {FORMAT!r}")
    return meta


def read_shard(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """``(tensors, metadata)`` of one shard (safetensors: no pickle)."""
    with safe_open(str(path), framework="pt") as f:
        meta = _read_metadata(f)
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key in REQUIRED_KEYS:
        if key not in tensors:
            raise ValueError(f"shard {path} lacks {key!r}")
    return tensors, meta


def _shard_paths(source) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        paths = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    else:
        paths = [Path(s) for s in source]
    if not paths:
        raise ValueError(f"no .safetensors shards found in {source}")
    return paths


def load_shards(source) -> tuple[dict[str, Tensor], list[dict]]:
    """All shards of a directory (or a list of files) concatenated: ``(tensors, metadata list)``."""
    parts, metas = [], []
    for p in _shard_paths(source):
        t, m = read_shard(p)
        parts.append(t)
        metas.append(m)
    keys = set.intersection(*(set(t) for t in parts))
    return {k: torch.cat([t[k] for t in parts]) for k in sorted(keys)}, metas


class DistillationShards(torch.utils.data.Dataset):
    """The samples of a shard directory; item ``i`` is ``{"z_s", "z_f", "prompt_embeds"[, ...]}``.

    Shard sizes come from the metadata; one shard at a time is held in memory.
    """

    def __init__(self, source):
        self.paths = _shard_paths(source)
        self.counts, self.metadata = [], []
        for p in self.paths:
            with safe_open(str(p), framework="pt") as f:
                meta = _read_metadata(f)
                n = f.get_slice("z_s").get_shape()[0]
            self.counts.append(n)
            self.metadata.append(meta)
        self.offsets = [0]
        for n in self.counts:
            self.offsets.append(self.offsets[-1] + n)
        self._cache: tuple[int, dict[str, Tensor]] | None = None

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        shard = next(k for k in range(len(self.paths)) if index < self.offsets[k + 1])
        if self._cache is None or self._cache[0] != shard:
            self._cache = (shard, read_shard(self.paths[shard])[0])
        row = index - self.offsets[shard]
        return {k: v[row] for k, v in self._cache[1].items()}


class _Capture:
    """Step-end callback that keeps the latents landing on chosen step indices."""

    def __init__(self, steps: dict[int, str], pooled: bool):
        self.steps = steps
        self.pooled = pooled
        self.latents: dict[str, Tensor] = {}
        self.embeds: Tensor | None = None
        self.pooled_embeds: Tensor | None = None

    @property
    def tensor_inputs(self):
        return ["latents", "prompt_embeds"] + (["add_text_embeds"] if self.pooled else [])

    def __call__(self, pipe, i, t, kw):
        from .diffusers import positive_condition

        if i in self.steps:
            self.latents[self.steps[i]] = kw["latents"].detach().clone()
        if i == 0:
            self.embeds = positive_condition(pipe, kw["prompt_embeds"], None, "tokens").detach().clone()
            if self.pooled:
                self.pooled_embeds = positive_condition(pipe, None, kw["add_text_embeds"], "pooled").detach().clone()
        return kw


def _existing_ok(path: Path, expect: dict) -> bool:
    if not path.exists():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = _read_metadata(f)
            n = f.get_slice("z_s").get_shape()[0]
    except Exception:  # a corrupt or foreign file is regenerated
        return False
    return n == len(expect["prompt_indices"]) and all(meta.get(k) == v for k, v in expect.items())


def generate_distillation_data(
    pipe,
    prompts: Sequence[str],
    out_dir: str | os.PathLike,
    plan: SplicePlan | None = None,
    *,
    teacher: str = "plan",
    batch_size: int = 4,
    shard_size: int = 256,
    seed: int = 0,
    guidance_scale: float = 7.5,
    rank: int | None = None,
    world_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    **call_kwargs,
) -> list[Path]:
    """Write this rank's shards of ``(z_s, z_f, prompt_embeds)`` for ``prompts``; returns their paths.

    ``pipe`` must use a ``DDIMScheduler`` (the teacher of the paper); it is restored
    afterwards. ``call_kwargs`` go to the pipeline (``negative_prompt``, ``height``, ...).
    Complete shards from an earlier run with the same settings are kept (resumable).
    """
    from tqdm.auto import tqdm

    from .diffusers import SplicedDDIMScheduler, check_scheduler

    plan = SplicePlan() if plan is None else plan
    if not isinstance(plan, SplicePlan):
        raise TypeError(f"plan must be a SplicePlan or None, got {type(plan).__name__}")
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a sequence of strings")
    if not prompts:
        raise ValueError("prompts must not be empty")
    for name, v in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    clash = [k for k in ("num_inference_steps", "timesteps", "sigmas", "prompt", "generator", "output_type",
                         "callback_on_step_end", "num_images_per_prompt") if k in call_kwargs]
    if clash:
        raise ValueError(f"generate_distillation_data sets {clash} itself; remove them")
    if check_scheduler(pipe.scheduler) != "ddim":
        raise ValueError(
            f"distillation data uses the DDIM teacher of the paper, got {type(pipe.scheduler).__name__}; "
            "set pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)"
        )
    rank, world_size = rank_and_world_size(rank, world_size)
    sched = plan.schedule_for(pipe.scheduler.config)
    ts = list(sched.teacher_timesteps(teacher))
    lands = ts[1:] + [CLEAN]  # the timestep each step lands on
    steps = {lands.index(sched.splice_timestep): "z_s"}
    if sched.target_timestep != CLEAN:
        steps[lands.index(sched.target_timestep)] = "z_f"
    pooled = "add_text_embeds" in (getattr(pipe, "_callback_tensor_inputs", []) or [])
    mine = [i for i in range(len(prompts)) if i % world_size == rank]
    chunks = [mine[k : k + shard_size] for k in range(0, len(mine), shard_size)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = pipe.scheduler.config
    common = {
        "plan": plan.to_dict(),
        "teacher": teacher,
        "timesteps": {
            "teacher": ts,
            "splice": sched.splice_timestep,
            "target": sched.target_timestep,
            "post": list(sched.post),
        },
        "model": {
            "pipeline": type(pipe).__name__,
            "name_or_path": str(pipe.config.get("_name_or_path", "")),
            "unet": str(pipe.unet.config.get("_name_or_path", "")),
            "scheduler": {k: v for k, v in dict(config).items() if not k.startswith("_")},
        },
        "guidance_scale": float(guidance_scale),
        "rank": rank,
        "world_size": world_size,
    }
    common = json.loads(json.dumps(common, default=str))  # compare like what is read back
    original = pipe.scheduler
    bar_config = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    spliced = SplicedDDIMScheduler.from_config(config)
    paths = []
    bar = tqdm(total=len(mine), desc=f"distill rank {rank}/{world_size}", disable=not progress, position=rank)
    try:
        pipe.set_progress_bar_config(disable=True)
        for k, chunk in enumerate(chunks):
            path = out_dir / f"rank{rank:03d}-of-{world_size:03d}-{k:05d}.safetensors"
            expect = {
                **common,
                "shard": k,
                "prompt_indices": chunk,
                "prompts": [prompts[i] for i in chunk],
                "seeds": [seed + i for i in chunk],
            }
            if _existing_ok(path, expect):
                paths.append(path)
                bar.update(len(chunk))
                continue
            parts: dict[str, list[Tensor]] = {}
            for b in range(0, len(chunk), batch_size):
                idx = chunk[b : b + batch_size]
                device = pipe._execution_device
                gens = [torch.Generator(device=device).manual_seed(seed + i) for i in idx]
                cap = _Capture(steps, pooled)
                pipe.scheduler = spliced
                final = pipe(
                    prompt=[prompts[i] for i in idx],
                    timesteps=ts,
                    generator=gens,
                    guidance_scale=guidance_scale,
                    output_type="latent",
                    callback_on_step_end=cap,
                    callback_on_step_end_tensor_inputs=cap.tensor_inputs,
                    **call_kwargs,
                ).images
                pipe.scheduler = original
                got = {
                    "z_s": cap.latents["z_s"],
                    "z_f": final if sched.target_timestep == CLEAN else cap.latents["z_f"],
                    "prompt_embeds": cap.embeds,
                }
                if pooled:
                    got["pooled_prompt_embeds"] = cap.pooled_embeds
                for key, v in got.items():
                    if not torch.isfinite(v).all():
                        raise FloatingPointError(f"non-finite {key} for prompts {idx}")
                    parts.setdefault(key, []).append(v.to(dtype))
                bar.update(len(idx))
            tensors = {key: torch.cat(v) for key, v in parts.items()}
            paths.append(write_shard(path, tensors, expect))
    finally:
        pipe.scheduler = original
        pipe.set_progress_bar_config(**bar_config)
        bar.close()
    return paths
