"""The shipped Fashion-MNIST model: size, loading, held-out prompts look like their class, the CRF helps."""

from __future__ import annotations

import pytest
import torch

from energycrf.apps.ldm import captions, pretrained
from energycrf.apps.ldm import evaluate as E
from tests.apps.ldm.conftest import needs_data, needs_text

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
    from energycrf.apps.ldm.classifier import accuracy, real_images

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
def test_shipped_crf_predicts_the_teachers_final_latent(pipe, tmp_path):
    """On fresh teacher trajectories (unseen prompts and seeds), M(z_s) is closer to z_f than z_s is."""
    from energycrf.integrations.distill import generate_distillation_data, load_shards
    from energycrf.integrations.plan import SplicePlan

    crf = pretrained.load_crf(pretrained.SPLICE_CRF)
    prompts = [p for p, _ in captions.evaluation_prompts(per_class=1, seed=7)[:4]]
    generate_distillation_data(pipe, prompts, tmp_path, SplicePlan.paper(), batch_size=4, seed=12345,
                               guidance_scale=4.0, progress=False)
    t, _ = load_shards(tmp_path)
    with torch.no_grad():
        out = crf(t["z_s"], t["prompt_embeds"])
    err_crf = (out - t["z_f"]).flatten(1).norm(dim=1)
    err_id = (t["z_s"] - t["z_f"]).flatten(1).norm(dim=1)
    assert torch.isfinite(out).all()
    assert (err_crf < err_id).all(), f"CRF {err_crf.tolist()} vs identity {err_id.tolist()}"
