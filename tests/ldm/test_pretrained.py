"""The shipped Fashion-MNIST model: size, loading, held-out prompts look like their class, the CRF helps."""

from __future__ import annotations

import pytest
import torch

from energycrf.ldm import captions, pretrained
from energycrf.ldm import evaluate as E
from tests.ldm.conftest import needs_data, needs_text

MB = 1024 * 1024
ACC_MIN = 0.7  # measured 0.875 on 40 held-out images at 20 steps, guidance 4 (seeds 11-14)


def test_shipped_files_are_small_safetensors():
    root = pretrained.ROOT
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * MB
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert not (pretrained.pipeline_dir() / "text_encoder").exists()


@pytest.fixture(scope="module")
def pipe():
    return pretrained.load_pipeline()


@pytest.fixture(scope="module")
def clf():
    return pretrained.load_classifier()


@needs_data
def test_shipped_classifier_accuracy(clf):
    from energycrf.ldm.classifier import accuracy, real_images

    x, y = real_images("test", limit=2000)
    assert accuracy(clf, x, y) >= 0.85  # 0.889 on all 10,000 test photographs


@needs_text
def test_held_out_prompts_look_like_their_class(pipe, clf):
    prompts = captions.evaluation_prompts(per_class=1, seed=3)  # unseen templates
    x = E.sample(pipe, [p for p, _ in prompts], [11, 12], E.Method("ddim", steps=20), guidance_scale=4.0)
    labels = torch.tensor([c for _, c in prompts]).repeat_interleave(2)
    acc = (clf(x).argmax(1) == labels).float().mean().item()
    assert acc >= ACC_MIN, f"class accuracy {acc:.2f} on held-out prompts"


@needs_text
def test_shipped_crf_moves_the_splice_towards_the_teacher(pipe):
    """LatentCRF 33 lands closer to the 50-step DDIM images than DDIM with the same 33 UNet calls."""
    from energycrf.integrations.plan import SplicePlan

    crf = pretrained.load_crf()
    prompts = [p for p, _ in captions.evaluation_prompts(per_class=1)[::2]]
    seeds = [5, 6]
    ref = E.sample(pipe, prompts, seeds, E.Method("ddim", steps=50))
    plan = SplicePlan.paper()
    with_crf = E.sample(pipe, prompts, seeds, E.Method("crf", plan=plan), crf)
    without = E.sample(pipe, prompts, seeds, E.Method("ddim", steps=plan.unet_calls))
    assert torch.isfinite(with_crf).all() and with_crf.shape == ref.shape
    d_crf = (with_crf - ref).abs().mean().item()
    d_id = (without - ref).abs().mean().item()
    assert d_crf < d_id, f"|CRF 33 - LDM 50| {d_crf:.4f} vs |LDM 33 - LDM 50| {d_id:.4f}"
