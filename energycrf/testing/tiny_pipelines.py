"""Tiny Stable Diffusion and SDXL pipelines with random weights, saved to a local folder.

For tests and examples of the commands that take ``--pipeline DIR`` (``energycrf generate``,
``energycrf evaluate``, ``energycrf distill-data``) where no real weights can be had:
every component is built from a small configuration (``block_out_channels=(32, 64)``,
8x8 latents, 16x16 images, a byte-level CLIP tokenizer written on the spot), then
``save_pretrained`` writes the usual diffusers layout, which
``DiffusionPipeline.from_pretrained(path, local_files_only=True)`` loads offline.

The scheduler is Stable Diffusion 1.5's (``scaled_linear`` 0.00085-0.012, ``steps_offset=1``,
``leading`` spacing): DDIM for :func:`tiny_sd_pipeline`, Euler for :func:`tiny_sdxl_pipeline`
(SDXL's default). Text widths: 32 (SD) and 64 (SDXL, two encoders of 32), so a CRF for
them is ``LatentCRF(channels=4, cond_dim=32)`` or ``cond_dim=64``.

    >>> from energycrf.testing.tiny_pipelines import tiny_sd_pipeline   # doctest: +SKIP
    >>> path = tiny_sd_pipeline(tmp_path / "sd")                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["tiny_sd_pipeline", "tiny_sdxl_pipeline", "SD_TEXT_WIDTH", "SDXL_TEXT_WIDTH", "TOKENS"]

#: The CRF condition width (``cond_dim``) of each tiny pipeline: its prompt embeddings' last size.
SD_TEXT_WIDTH = 32
SDXL_TEXT_WIDTH = 64
#: Tokenizer length (77 in Stable Diffusion; short here).
TOKENS = 16

_SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                       timestep_spacing="leading", num_train_timesteps=1000)


def _byte_unicode() -> list[str]:
    """GPT-2's byte-to-character table (what CLIP's byte-level tokenizer expects)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def _tokenizer(folder: Path):
    """A byte-level CLIP tokenizer without merges: every byte is a token (vocabulary of 514)."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in _byte_unicode():
            vocab[c + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=TOKENS)


def _text_config(projection: int | None = None):
    from transformers import CLIPTextConfig

    kw = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=514,
              max_position_embeddings=TOKENS, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    if projection is not None:
        kw["projection_dim"] = projection
    return CLIPTextConfig(**kw)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=32, sample_size=16)


def _unet(**kw):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **kw)


def _save(pipe, path: str | os.PathLike) -> Path:
    out = Path(path)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"path must be a new or empty folder, got {str(out)!r}, which holds files")
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def tiny_sd_pipeline(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build a tiny ``StableDiffusionPipeline`` (DDIM, random weights from ``seed``), save it into ``path``.

    Returns ``path`` (a ``Path``), which ``DiffusionPipeline.from_pretrained(path,
    local_files_only=True)`` loads. Text width :data:`SD_TEXT_WIDTH`.
    """
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    with tempfile.TemporaryDirectory() as vocab:
        torch.manual_seed(seed)
        pipe = StableDiffusionPipeline(
            unet=_unet(cross_attention_dim=SD_TEXT_WIDTH, attention_head_dim=4), vae=_vae(),
            text_encoder=CLIPTextModel(_text_config()), tokenizer=_tokenizer(Path(vocab)),
            scheduler=DDIMScheduler(**_SD15_SCHEDULER, clip_sample=False, set_alpha_to_one=False),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return _save(pipe, path)


def tiny_sdxl_pipeline(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build a tiny ``StableDiffusionXLPipeline`` (Euler, random weights from ``seed``), save it into ``path``.

    Two text encoders of width 32 (the UNet's cross-attention sees their 64-wide
    concatenation, :data:`SDXL_TEXT_WIDTH`), SDXL's text-and-time conditioning. Returns ``path``.
    """
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with tempfile.TemporaryDirectory() as vocab:
        torch.manual_seed(seed)
        unet = _unet(attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                     addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                     projection_class_embeddings_input_dim=80,  # 32 (pooled) + 6 time ids x 8
                     cross_attention_dim=SDXL_TEXT_WIDTH)
        tokenizer = _tokenizer(Path(vocab))
        pipe = StableDiffusionXLPipeline(
            vae=_vae(), text_encoder=CLIPTextModel(_text_config()),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(projection=32)),
            tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
            scheduler=EulerDiscreteScheduler(**_SD15_SCHEDULER), force_zeros_for_empty_prompt=True)
        return _save(pipe, path)
