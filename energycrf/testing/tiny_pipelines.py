"""Tiny Stable Diffusion (1.5 and XL) pipelines built from configs, with random weights.

For tests and tutorials that need a real diffusers pipeline on a machine without network
access: every component is built from a small configuration (``block_out_channels=(32,
64)``, a 2-layer CLIP text encoder of width 32, a byte-level CLIP tokenizer written
locally), nothing is downloaded, and a build takes well under a second::

    from energycrf.testing.tiny_pipelines import tiny_sd_pipeline

    pipe = tiny_sd_pipeline("tiny-sd")          # built and saved to ./tiny-sd
    # energycrf distill-data --pipeline tiny-sd ...; energycrf train --pipeline tiny-sd ...

The scheduler is Stable Diffusion 1.5's (``scaled_linear`` 0.00085-0.012,
``steps_offset=1``, ``leading`` spacing), so the paper's plan runs at the timesteps
976, ..., 226 | 201 | 21, 1. Images are 16 x 16 (latents 4 x 8 x 8); the prompts are
cut to 16 tokens. The pictures they make are noise: the weights are random.

Needs the ``diffusers`` extra (diffusers, transformers).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["SD15_SCHEDULER", "TOKENS", "SD_TEXT_WIDTH", "SDXL_TEXT_WIDTH", "tiny_sd_pipeline", "tiny_sdxl_pipeline"]

#: Stable Diffusion 1.5's noise schedule and timestep grid.
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading", num_train_timesteps=1000)
#: The tokenizer's length (77 in Stable Diffusion).
TOKENS = 16
#: The CRF condition width (``cond_dim``) of each tiny pipeline: its prompt embeddings' last size.
SD_TEXT_WIDTH = 32
SDXL_TEXT_WIDTH = 64


def _byte_chars() -> list[str]:
    """The 256 byte characters of CLIP's byte-level BPE, in GPT-2's order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def _tokenizer():
    """A CLIP tokenizer whose tokens are the bytes (no merges): 514 tokens in all."""
    from transformers import CLIPTokenizer

    vocab = {c: i for i, c in enumerate(_byte_chars())}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(_byte_chars())})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(d) / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer(str(Path(d) / "vocab.json"), str(Path(d) / "merges.txt"), model_max_length=TOKENS)


def _text_encoder(projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                            vocab_size=514, max_position_embeddings=TOKENS, bos_token_id=512, eos_token_id=513,
                            pad_token_id=513, **({} if projection is None else {"projection_dim": projection}))
    return CLIPTextModel(config) if projection is None else CLIPTextModelWithProjection(config)


def _vae(image_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=image_channels, out_channels=image_channels,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, norm_num_groups=32, sample_size=16)


def _unet(**extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **extra)


def _finish(pipe, path):
    pipe.set_progress_bar_config(disable=True)
    if path is not None:
        pipe.save_pretrained(os.fspath(path))
    return pipe


def tiny_sd_pipeline(path: str | os.PathLike | None = None, *, seed: int = 0, image_channels: int = 3):
    """A tiny ``StableDiffusionPipeline`` (DDIM, SD 1.5's schedule), saved to ``path`` if given.

    ``image_channels``: 3 (RGB) or 1 (a greyscale VAE). The text encoder's width, and so
    the UNet's ``cross_attention_dim``, is 32. The weights are drawn from ``seed``.
    """
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    if image_channels not in (1, 3):
        raise ValueError(f"image_channels must be 1 (grey) or 3 (RGB), got {image_channels!r}")
    torch.manual_seed(seed)
    unet = _unet(cross_attention_dim=32, attention_head_dim=4)
    vae, text = _vae(image_channels), _text_encoder()
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=_tokenizer(),
                                   scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return _finish(pipe, path)


def tiny_sdxl_pipeline(path: str | os.PathLike | None = None, *, seed: int = 0):
    """A tiny ``StableDiffusionXLPipeline`` (Euler, SD 1.5's schedule), saved to ``path`` if given.

    Two text encoders of width 32, so the token embeddings the UNet (and a CRF) receives
    are 64 wide; the pooled embedding is 32 wide.
    """
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    unet = _unet(attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                 projection_class_embeddings_input_dim=80,  # 32 (pooled) + 6 * 8 (time ids)
                 cross_attention_dim=64)  # 32 + 32 (two text encoders)
    euler = {k: v for k, v in SD15_SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")}
    pipe = StableDiffusionXLPipeline(vae=_vae(3), text_encoder=_text_encoder(), text_encoder_2=_text_encoder(32),
                                     tokenizer=_tokenizer(), tokenizer_2=_tokenizer(), unet=unet,
                                     scheduler=EulerDiscreteScheduler(**euler), force_zeros_for_empty_prompt=True)
    return _finish(pipe, path)
