"""apps.pipelines.load_crf_for: the CRF checked against the pipeline, and the plan generate/evaluate run."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


def test_the_plan_is_the_given_then_the_recorded_then_the_papers_said_aloud(tmp_path, capsys):
    from diffusers import PNDMScheduler

    from energycrf.apps._command import UsageError
    from energycrf.apps.pipelines import load_crf_for
    from energycrf.integrations.bundle import save_crf
    from energycrf.integrations.plan import CorrectorPlan, SplicePlan
    from energycrf.learned.latent_crf import LatentCRF
    from energycrf.testing.tiny_pipelines import SD15_SCHEDULER, SD_TEXT_WIDTH, tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    torch.manual_seed(0)
    recorded = CorrectorPlan("dpmpp", "trailing", 2)
    save_crf(LatentCRF(channels=4, cond_dim=SD_TEXT_WIDTH), tmp_path / "with", recorded)
    LatentCRF(channels=4, cond_dim=SD_TEXT_WIDTH).save_pretrained(tmp_path / "without")
    crf, plan = load_crf_for(tmp_path / "with", pipe)
    assert plan == recorded and isinstance(crf, LatentCRF) and capsys.readouterr().out == ""
    given = SplicePlan(pre_steps=4, pre_run=2, post_steps=8, post_run=1)
    assert load_crf_for(tmp_path / "with", pipe, plan=given)[1] == given
    _, plan = load_crf_for(tmp_path / "without", pipe)
    assert plan == SplicePlan() and "--crf: no plan recorded" in capsys.readouterr().out
    LatentCRF(channels=4, cond_dim=8).save_pretrained(tmp_path / "other")
    with pytest.raises(UsageError, match="--crf: expected a LatentCRF for this pipeline"):
        load_crf_for(tmp_path / "other", pipe)
    pipe.scheduler = PNDMScheduler(**{k: v for k, v in SD15_SCHEDULER.items()
                                      if k not in ("clip_sample", "set_alpha_to_one")})
    with pytest.raises(UsageError, match="--pipeline"):  # a splice plan cannot run on PNDM: before any image
        load_crf_for(tmp_path / "with", pipe, plan=given)
    assert load_crf_for(tmp_path / "with", pipe)[1] == recorded  # a corrector brings its own sampler
