"""The shipped LatentCRFs: names, loading by name or path, the plan recorded with each."""

from __future__ import annotations

import json

import pytest

from energycrf.apps.ldm import pretrained
from energycrf.integrations.plan import CorrectorPlan, SplicePlan
from tests.apps.ldm.conftest import needs_text


def test_names_and_default():
    names = pretrained.crf_names()
    assert names[0] == pretrained.SPLICE_CRF == "latent-crf" and pretrained.DEFAULT_CRF in names
    assert names[1:] == pretrained.corrector_names()
    assert pretrained.crf_dir() == pretrained.crf_dir(pretrained.DEFAULT_CRF)
    with pytest.raises(ValueError, match="shipped"):
        pretrained.crf_dir("no-such-crf")


def test_load_by_name_by_path_and_default_with_plans():
    splice = pretrained.load_crf("latent-crf")
    assert splice.plan == SplicePlan.paper() and not splice.training
    by_path = pretrained.load_crf(pretrained.ROOT / "latent-crf")
    assert by_path.plan == splice.plan
    assert pretrained.load_crf(path=str(pretrained.ROOT / "latent-crf")).plan == splice.plan
    assert type(pretrained.load_crf().plan) in (SplicePlan, CorrectorPlan)
    with pytest.raises(FileNotFoundError, match="no LatentCRF"):
        pretrained.load_crf("no-such-crf")


@pytest.mark.parametrize("name", pretrained.corrector_names())
def test_each_shipped_corrector_records_its_plan_and_command(name):
    d = pretrained.crf_dir(name)
    crf = pretrained.load_crf(name)
    assert isinstance(crf.plan, CorrectorPlan)
    record = json.loads((d / "training.json").read_text())
    assert record["command"].startswith("energycrf train-corrector") and record["plan"] == crf.plan.to_dict()
    weights = [d / n for n in ("diffusion_pytorch_model.safetensors", "model.safetensors") if (d / n).is_file()]
    assert (d / "README.md").is_file() and len(weights) == 1 and weights[0].stat().st_size < 1024 * 1024


@needs_text
def test_default_corrector_runs_its_plan_and_moves_towards_the_teacher():
    """generate(pipe, crf) with no plan: the recorded 11 UniPC calls, then the CRF; closer to the teacher."""
    import torch

    from energycrf.apps.ldm import captions
    from energycrf.integrations.corrector import sample_latents
    from energycrf.integrations.cost import UNetCallCounter
    from energycrf.integrations.diffusers import generate

    pipe = pretrained.load_pipeline()
    crf = pretrained.load_crf()
    assert crf.plan == CorrectorPlan("unipc", "trailing", 11)
    prompts = [p for p, _ in captions.evaluation_prompts(per_class=1, seed=5)[:2] for _ in range(2)]
    seeds = [900, 901, 900, 901]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    with torch.no_grad(), UNetCallCounter(pipe.unet) as counter:
        z = generate(pipe, crf, prompt=prompts, generator=gens, guidance_scale=4.0, output_type="latent").images
    assert counter.calls == 11
    teacher = sample_latents(pipe, prompts, seeds, sampler="ddim", steps=50, batch_size=4)
    plain = sample_latents(pipe, prompts, seeds, sampler="unipc", spacing="trailing", steps=11, batch_size=4)
    ratio = float(((z - teacher) ** 2).mean() / ((plain - teacher) ** 2).mean())
    assert ratio < 0.9, ratio  # about 0.71 over 320 held-out images per seed set (docs/payoff.md)
