"""Latents of any sampling method, and a CRF trained for a plan on the teacher's own trajectories.

- :func:`sample_latents`: the final latents of one method (a plain sampler with ``steps``
  calls, or a CRF with its plan through :func:`~energycrf.integrations.diffusers.generate`)
  for images given as ``(prompt, seed)`` pairs; the seed fixes the initial noise, so two
  methods given the same pairs start every image from the same noise (paired images).
- :func:`corrector_pairs`: for a :class:`~energycrf.integrations.plan.CorrectorPlan`, the
  distillation pairs ``(z_N, z_T, c)``: ``z_N`` the final latent of the plan's sampler after
  ``N`` calls, ``z_T`` the teacher's final latent (DDIM, 50 steps by default) from the same
  prompt and noise, ``c`` the positive prompt embeddings the CRF is conditioned on.
  Cached on disk (the teacher's latents are shared by every plan).
- :func:`fit_corrector`: ``min_theta mean ||M_theta(z_N, c) - z_T||^2`` (the paper's
  ``L_DT`` with the sampler's final latent as input), optionally plus
  ``lambda mean ||D(M_theta(z_N, c)) - D(z_T)||^2`` through a frozen decoder ``D`` (the
  VAE: the error measured where the images are), with AdamW, a held-out part of the
  pairs for a validation loss, a progress bar and the loss history.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .plan import CorrectorPlan, SplicePlan

__all__ = ["sample_latents", "corrector_pairs", "fit_corrector"]


def _check_pairs(prompts, seeds) -> tuple[list[str], list[int]]:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a sequence of strings (one per image)")
    seeds = list(seeds)
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise TypeError("seeds must be ints (one per image)")
    if not prompts or len(prompts) != len(seeds):
        raise ValueError(f"prompts and seeds must be non-empty and paired, got {len(prompts)} and {len(seeds)}")
    return list(prompts), seeds


class _Embeds:
    """Step-end callback keeping the positive prompt embeddings of the first step."""

    tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(self):
        self.value: Tensor | None = None

    def __call__(self, pipe, i, t, kw):
        if self.value is None:
            e = kw["prompt_embeds"]
            self.value = (e.chunk(2)[1] if getattr(pipe, "do_classifier_free_guidance", False) else e).detach().clone()
        return kw


@torch.no_grad()
def sample_latents(pipe, prompts: Sequence[str], seeds: Sequence[int], *, sampler: str = "ddim",
                   spacing: str | None = None, steps: int | None = 50, crf=None,
                   plan: SplicePlan | CorrectorPlan | None = None, guidance_scale: float = 4.0,
                   batch_size: int = 16, return_embeds: bool = False, progress: bool = False, desc: str = "",
                   **call_kwargs):
    """Final latents ``(n, C, h, w)`` of image ``i = (prompts[i], seeds[i])``, in order.

    Without ``crf``: ``steps`` calls of ``sampler`` (``"ddim"``, ``"dpmpp"``, ``"unipc"``)
    with ``spacing`` (``None``: the pipeline's). With ``crf``: ``generate(pipe, crf, plan)``
    (``plan=None``: the CRF's recorded plan). With ``return_embeds`` also the positive
    prompt embeddings ``(n, L, D)``. The pipeline's scheduler is restored.
    """
    from tqdm.auto import tqdm

    from .diffusers import generate
    from .schedulers import make_scheduler, quiet_scheduler_warnings

    prompts, seeds = _check_pairs(prompts, seeds)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if crf is None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1 for a plain sampler, got {steps!r}")
    original = pipe.scheduler
    out, embeds = [], []
    try:
        for k in tqdm(range(0, len(prompts), batch_size), desc=desc or "sample", disable=not progress, leave=False):
            gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds[k : k + batch_size]]
            cap = _Embeds()
            kw = dict(prompt=prompts[k : k + batch_size], generator=gens, guidance_scale=guidance_scale,
                      output_type="latent", callback_on_step_end=cap,
                      callback_on_step_end_tensor_inputs=cap.tensor_inputs, **call_kwargs)
            if crf is not None:
                z = generate(pipe, crf, plan, **kw).images
            else:
                pipe.scheduler = make_scheduler(original.config, sampler, spacing)
                with quiet_scheduler_warnings():
                    z = pipe(num_inference_steps=steps, **kw).images
                pipe.scheduler = original
            if not torch.isfinite(z).all():
                raise FloatingPointError(f"non-finite latents for images {k}..{k + len(gens) - 1}")
            out.append(z.float().cpu())
            embeds.append(cap.value.float().cpu())
    finally:
        pipe.scheduler = original
    z = torch.cat(out)
    return (z, torch.cat(embeds)) if return_embeds else z


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(cache_dir, name: str, key: dict, make):
    """``make()`` -> dict of tensors, stored in ``cache_dir/name-<digest of key>.safetensors``."""
    from safetensors.torch import load_file

    from ..io import save_safetensors

    if cache_dir is None:
        return make()
    path = Path(cache_dir) / f"{name}-{_digest(key)}.safetensors"
    if path.is_file():
        return load_file(str(path))
    tensors = {k: v.contiguous() for k, v in make().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_safetensors(tensors, tmp, metadata={"key": json.dumps(key, sort_keys=True, default=str)})
    os.replace(tmp, path)
    return tensors


def corrector_pairs(pipe, prompts: Sequence[str], seeds: Sequence[int], plan: CorrectorPlan, *,
                    teacher_steps: int = 50, teacher_sampler: str = "ddim", teacher_spacing: str | None = None,
                    guidance_scale: float = 4.0, batch_size: int = 16, cache_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> dict[str, Tensor]:
    """Distillation pairs for ``plan``: ``{"z_in", "z_teacher", "prompt_embeds"}`` (see the module docstring).

    With ``cache_dir`` both latent sets are kept on disk under a digest of their settings
    (prompts, seeds, sampler, steps, guidance, the pipeline's scheduler configuration) and
    reused by later calls.
    """
    if not isinstance(plan, CorrectorPlan):
        raise TypeError(f"plan must be a CorrectorPlan, got {type(plan).__name__}")
    prompts, seeds = _check_pairs(prompts, seeds)
    sched = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    common = {"prompts": prompts, "seeds": seeds, "guidance_scale": float(guidance_scale), "scheduler": sched,
              "unet": str(pipe.unet.config.get("_name_or_path", ""))}
    kw = dict(guidance_scale=guidance_scale, batch_size=batch_size, progress=progress, return_embeds=True)

    def run(sampler, spacing, steps, desc):
        def make():
            z, e = sample_latents(pipe, prompts, seeds, sampler=sampler, spacing=spacing, steps=steps, desc=desc, **kw)
            return {"z": z, "prompt_embeds": e}
        return make

    teacher = _cached(cache_dir, "teacher", {**common, "sampler": teacher_sampler, "spacing": teacher_spacing,
                                             "steps": teacher_steps},
                      run(teacher_sampler, teacher_spacing, teacher_steps, f"teacher {teacher_sampler} {teacher_steps}"))
    student = _cached(cache_dir, "input", {**common, "plan": plan.to_dict()},
                      run(plan.sampler, plan.spacing, plan.calls, f"{plan.sampler} {plan.calls}"))
    return {"z_in": student["z"], "z_teacher": teacher["z"], "prompt_embeds": student["prompt_embeds"]}


def fit_corrector(crf: torch.nn.Module, z_in: Tensor, z_target: Tensor, cond: Tensor | None = None, *,
                  steps: int = 1500, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.01,
                  val_fraction: float = 0.1, val_every: int = 50, seed: int = 0, progress: bool = True,
                  decoder=None, x_target: Tensor | None = None, pixel_weight: float = 0.0,
                  lr_schedule: str = "cosine", warmup: int = 50) -> dict:
    """Train ``crf`` in place on ``mean ||M(z_in, c) - z_target||^2``; returns the loss history.

    With ``pixel_weight`` ``lambda > 0`` the loss adds ``lambda mean ||decoder(M(z_in, c)) -
    x_target||^2`` (``decoder`` differentiable, its own parameters left alone; ``x_target``
    the decoded teacher latents); ``"loss"`` is then the total and ``"val_pixel_loss"``
    the held-out pixel term.

    A ``val_fraction`` of the pairs (drawn with ``seed``) is held out and its loss
    recorded every ``val_every`` steps (the first entry is the untrained layer; the
    identity's loss ``mean ||z_in - z_target||^2`` is reported beside it). Mini-batches
    are drawn without replacement, epoch by epoch, from a generator seeded with ``seed``.

    ``lr_schedule``: ``"cosine"`` (linear warm-up over ``warmup`` steps, then a cosine decay
    to 0 at ``steps``: the last iterates average out the mini-batch noise) or ``"constant"``.

    Returns ``{"step", "loss", "val_step", "val_loss", "val_pixel_loss", "identity_val_loss", "train_size",
    "val_size"}``.
    """
    from tqdm.auto import tqdm

    if z_in.shape != z_target.shape or z_in.ndim != 4:
        raise ValueError(f"z_in and z_target must be (n, C, h, w) of the same shape, got {tuple(z_in.shape)} "
                         f"and {tuple(z_target.shape)}")
    if cond is not None and len(cond) != len(z_in):
        raise ValueError(f"cond must have {len(z_in)} rows, got {len(cond)}")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("val_every", val_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(val_fraction, float) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be a float in [0, 1), got {val_fraction!r}")
    if not (isinstance(pixel_weight, (int, float)) and math.isfinite(pixel_weight) and pixel_weight >= 0):
        raise ValueError(f"pixel_weight must be a finite number >= 0, got {pixel_weight!r}")
    if pixel_weight > 0 and (decoder is None or x_target is None or len(x_target) != len(z_in)):
        raise ValueError("pixel_weight > 0 needs decoder and x_target (one decoded teacher image per pair)")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(z_in), generator=gen)
    n_val = int(round(val_fraction * len(z_in)))
    val, train = perm[:n_val], perm[n_val:]
    if len(train) < 1:
        raise ValueError("no training pairs left after the validation split")
    pick = (lambda t, i: None if t is None else t[i])

    pixels = pixel_weight > 0

    def val_loss() -> float:
        if n_val == 0:
            return float("nan")
        was = crf.training
        crf.eval()
        with torch.no_grad():
            out = crf(z_in[val], pick(cond, val))
            if pixels:
                hist["val_pixel_loss"].append(float(((decoder(out) - x_target[val]) ** 2).mean()))
        crf.train(was)
        return float(((out - z_target[val]) ** 2).mean())

    def loss_of(idx):
        out = crf(z_in[idx], pick(cond, idx))
        loss = ((out - z_target[idx]) ** 2).mean()
        return loss + pixel_weight * ((decoder(out) - x_target[idx]) ** 2).mean() if pixels else loss

    opt = torch.optim.AdamW(crf.parameters(), lr=lr, weight_decay=weight_decay)
    hist = {"step": [], "loss": [], "val_step": [0], "val_pixel_loss": [],
            "identity_val_loss": float(((z_in[val] - z_target[val]) ** 2).mean()) if n_val else float("nan"),
            "train_size": int(len(train)), "val_size": int(n_val)}
    hist["val_loss"] = [val_loss()]
    crf.train()
    order, pos = train[torch.randperm(len(train), generator=gen)], 0
    bar = tqdm(range(1, steps + 1), desc="fit corrector", disable=not progress)
    for step in bar:
        if pos + batch_size > len(order):
            order, pos = train[torch.randperm(len(train), generator=gen)], 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        if lr_schedule == "cosine":
            f = step / warmup if step <= warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
            for group in opt.param_groups:
                group["lr"] = lr * f
        loss = loss_of(idx)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the corrector's loss is not finite at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist["step"].append(step)
        hist["loss"].append(value)
        if step % val_every == 0 or step == steps:
            hist["val_step"].append(step)
            hist["val_loss"].append(val_loss())
            bar.set_postfix(loss=f"{value:.4g}", val=f"{hist['val_loss'][-1]:.4g}")
    crf.eval()
    return hist
