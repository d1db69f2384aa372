"""Tiny diffusers pipelines built from configs (random weights, no hub), and CRF stand-ins.

The scheduler settings are Stable Diffusion 1.5's (scaled_linear 0.00085-0.012,
steps_offset 1, leading spacing), so the paper's plan runs at 976, ..., 226, 21, 1.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

# diffusers/transformers are imported inside the builders: the test modules that need
# them call pytest.importorskip, the others run without the `diffusers` extra.

SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
    num_train_timesteps=1000,
)
TOKENS = 16  # tokenizer length (77 in SD; short here)


def _byte_unicode() -> list[str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A byte-level CLIP vocabulary (no merges): every byte is a token."""
    d = tmp_path_factory.mktemp("tokenizer")
    vocab: dict[str, int] = {}
    for c in _byte_unicode():
        vocab[c] = len(vocab)
    for c in _byte_unicode():
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return d


def make_tokenizer(tokenizer_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), model_max_length=TOKENS)


def _text_config(hidden=32, projection=None):
    from transformers import CLIPTextConfig

    kw = dict(
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=514,
        max_position_embeddings=TOKENS,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    if projection is not None:
        kw["projection_dim"] = projection
    return CLIPTextConfig(**kw)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=16,
    )


def build_sd(tokenizer_dir, scheduler_cls=None):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    vae = _vae()
    text = CLIPTextModel(_text_config())
    sched = (scheduler_cls or DDIMScheduler)(**SD15_SCHEDULER)
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=make_tokenizer(tokenizer_dir),
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sdxl(tokenizer_dir):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 32 (pooled) + 6 * 8 (time ids)
        cross_attention_dim=64,  # 32 + 32 (two text encoders)
    )
    sched = EulerDiscreteScheduler(
        **{k: v for k, v in SD15_SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")}
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(projection=32)),
        tokenizer=make_tokenizer(tokenizer_dir),
        tokenizer_2=make_tokenizer(tokenizer_dir),
        unet=unet,
        scheduler=sched,
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread on a shared machine; restored after each module
    (module scope, so the module-scoped pipelines and shards are built under it too)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sd_pipe(tokenizer_dir):
    return build_sd(tokenizer_dir)


@pytest.fixture(scope="module")
def sdxl_pipe(tokenizer_dir):
    return build_sdxl(tokenizer_dir)


class UNetCallRecorder:
    """Forward pre-hook on a UNet: records the timestep and input of every call."""

    def __init__(self, unet):
        self.timesteps: list[int] = []
        self.inputs: list[torch.Tensor] = []
        self._handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self.timesteps.append(int(torch.as_tensor(t).flatten()[0]))
        self.inputs.append(sample.detach().clone())

    def close(self):
        self._handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StandInCRF(torch.nn.Module):
    """Same call form as ec.LatentCRF: crf(x, c) -> tensor like x (a conditioned 1x1 mix)."""

    def __init__(self, channels=4, cond_dim=32):
        super().__init__()
        self.mix = torch.nn.Conv2d(channels, channels, 1)
        self.cond = torch.nn.Linear(cond_dim, channels)
        torch.nn.init.normal_(self.mix.weight, std=0.1)
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, c=None):
        self.calls.append((x.detach().clone(), None if c is None else c.detach().clone()))
        y = x + 0.1 * self.mix(x)
        if c is not None:
            pooled = c.mean(1) if c.dim() == 3 else c
            y = y + 0.01 * self.cond(pooled)[:, :, None, None]
        return y


@pytest.fixture
def standin_crf():
    torch.manual_seed(1)
    return StandInCRF()


def make_crf(cond_dim=32, seed=11):
    torch.manual_seed(seed)
    return StandInCRF(cond_dim=cond_dim)


@pytest.fixture(scope="session")
def tiny():
    """Helpers for the tests (imported through a fixture: tests/ is not a package)."""
    import types

    return types.SimpleNamespace(
        SD15_SCHEDULER=dict(SD15_SCHEDULER),
        TOKENS=TOKENS,
        UNetCallRecorder=UNetCallRecorder,
        StandInCRF=StandInCRF,
        make_crf=make_crf,
        build_sd=build_sd,
        build_sdxl=build_sdxl,
    )
