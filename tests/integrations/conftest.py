"""Tiny diffusers pipelines (energycrf.testing.tiny_pipelines: random weights, no hub), and CRF stand-ins.

The scheduler settings are Stable Diffusion 1.5's (scaled_linear 0.00085-0.012,
steps_offset 1, leading spacing), so the paper's plan runs at 976, ..., 226, 21, 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

# diffusers/transformers are imported inside the builders: the test modules that need
# them call pytest.importorskip, the others run without the `diffusers` extra.
from energycrf.testing.tiny_pipelines import SD15_SCHEDULER, TOKENS  # noqa: E402  (the builders live there)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """Kept for the tests' call form ``build_sd(tokenizer_dir)``: the tokenizer is built by the builders."""
    return tmp_path_factory.mktemp("tokenizer")


def build_sd(tokenizer_dir=None, scheduler_cls=None):
    """:func:`energycrf.testing.tiny_pipelines.tiny_sd_pipeline` (DDIM), with ``scheduler_cls`` instead if given."""
    from energycrf.testing.tiny_pipelines import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    if scheduler_cls is not None:
        pipe.scheduler = scheduler_cls(**SD15_SCHEDULER)
    return pipe


def build_sdxl(tokenizer_dir=None):
    """:func:`energycrf.testing.tiny_pipelines.tiny_sdxl_pipeline` (Euler)."""
    from energycrf.testing.tiny_pipelines import tiny_sdxl_pipeline

    return tiny_sdxl_pipeline()


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
