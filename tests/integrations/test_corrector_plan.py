"""CorrectorPlan: the plan, generate() with it, the plan recorded with a CRF, UNet calls counted by a hook."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler  # noqa: E402

from energycrf.integrations.bundle import CRF_PLAN_FILE, load_crf, read_plan, save_crf  # noqa: E402
from energycrf.integrations.cost import UNetCallCounter, crf_cost, interleaved_medians  # noqa: E402
from energycrf.integrations.diffusers import generate  # noqa: E402
from energycrf.integrations.plan import CorrectorPlan, SplicePlan, plan_from_dict  # noqa: E402
from energycrf.integrations.schedulers import make_scheduler, quiet_scheduler_warnings  # noqa: E402


def _kw(seed=0, **extra):
    g = torch.Generator().manual_seed(5)
    kw = dict(prompt_embeds=torch.randn(1, 16, 32, generator=g), negative_prompt_embeds=torch.randn(1, 16, 32, generator=g),
              guidance_scale=5.0, generator=torch.Generator().manual_seed(seed), output_type="latent")
    kw.update(extra)
    return kw


def test_corrector_plan_fields_and_round_trip():
    p = CorrectorPlan("unipc", "trailing", 6)
    assert p.unet_calls == 6 and p.to_dict() == {"kind": "corrector", "sampler": "unipc", "spacing": "trailing", "calls": 6}
    assert plan_from_dict(json.loads(p.to_json())) == p
    s = SplicePlan(pre_run=30)
    assert plan_from_dict(s.to_dict()) == s and plan_from_dict({"kind": "splice", **s.to_dict()}) == s
    with pytest.raises(ValueError, match="sampler"):
        CorrectorPlan("euler")
    with pytest.raises(ValueError, match="spacing"):
        CorrectorPlan("dpmpp", "middle")
    with pytest.raises(TypeError, match="calls"):
        CorrectorPlan("dpmpp", "trailing", 2.0)
    with pytest.raises(ValueError, match="calls"):
        CorrectorPlan("dpmpp", "trailing", 0)
    with pytest.raises(ValueError, match="kind"):
        plan_from_dict({"kind": "other"})
    with pytest.raises(ValueError, match="unknown"):
        plan_from_dict({"kind": "corrector", "steps": 3})


def test_make_scheduler_spacing(tiny):
    cfg = DDIMScheduler(**tiny.SD15_SCHEDULER).config
    s = make_scheduler(cfg, "dpmpp", "trailing")
    assert isinstance(s, DPMSolverMultistepScheduler) and s.config.algorithm_type == "dpmsolver++"
    with quiet_scheduler_warnings():
        s.set_timesteps(6)
        lead = make_scheduler(cfg, "dpmpp")
        lead.set_timesteps(6)
    assert s.timesteps.tolist() == [999, 832, 666, 499, 332, 166]
    assert lead.timesteps.tolist() == [853, 711, 569, 427, 285, 143]  # the inherited leading grid stops short
    assert isinstance(make_scheduler(cfg, "unipc", "trailing"), UniPCMultistepScheduler)
    assert make_scheduler(cfg, "ddim", "trailing").config.timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="sampler"):
        make_scheduler(cfg, "euler")


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp", "unipc"])
def test_generate_corrector_runs_the_sampler_then_corrects_the_final_latent(sd_pipe, tiny, sampler):
    plan = CorrectorPlan(sampler, "trailing", 3)
    crf = tiny.make_crf()
    with UNetCallCounter(sd_pipe.unet) as counter:
        out = generate(sd_pipe, crf, plan, **_kw()).images
    assert counter.calls == 3 and counter.batch_sizes == [2, 2, 2]  # guided: [negative; positive]
    assert len(crf.calls) == 1 and type(sd_pipe.scheduler) is DDIMScheduler  # restored
    # the same sampler without the CRF, then the CRF by hand: the same latent
    sd_pipe.scheduler = make_scheduler(sd_pipe.scheduler.config, sampler, "trailing")
    try:
        with quiet_scheduler_warnings():
            plain = sd_pipe(num_inference_steps=3, **_kw()).images
    finally:
        sd_pipe.scheduler = DDIMScheduler.from_config(sd_pipe.scheduler.config)
    z_in, c_in = crf.calls[0]
    torch.testing.assert_close(z_in, plain)
    torch.testing.assert_close(c_in, _kw()["prompt_embeds"])  # the positive half
    with torch.no_grad():
        torch.testing.assert_close(out, crf(plain, c_in))


def test_generate_uses_the_plan_recorded_with_the_crf(sd_pipe, tiny, tmp_path):
    import energycrf as ec

    torch.manual_seed(0)
    crf = ec.LatentCRF(channels=4, cond_dim=32)
    with torch.no_grad():
        for p in crf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    plan = CorrectorPlan("dpmpp", "trailing", 2)
    save_crf(crf, tmp_path / "c", plan, extra_files={"training.json": "{}\n"})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                                    CRF_PLAN_FILE, "training.json"]
    assert read_plan(tmp_path / "c") == plan and read_plan(tmp_path) is None
    loaded = load_crf(tmp_path / "c")
    assert loaded.plan == plan and not loaded.training
    fresh = ec.LatentCRF.from_pretrained(tmp_path / "c")  # still a plain LatentCRF directory
    assert isinstance(fresh, ec.LatentCRF) and fresh.pretrained_dir == tmp_path / "c"
    with UNetCallCounter(sd_pipe.unet) as counter:  # from_pretrained alone: generate() reads plan.json beside it
        implicit = generate(sd_pipe, fresh, **_kw()).images
        torch.testing.assert_close(implicit, generate(sd_pipe, loaded, plan, **_kw()).images)
    assert counter.calls == 2 + 2
    with UNetCallCounter(sd_pipe.unet) as counter:
        implicit = generate(sd_pipe, loaded, **_kw()).images
    assert counter.calls == 2
    explicit = generate(sd_pipe, loaded, plan, **_kw()).images
    torch.testing.assert_close(implicit, explicit)
    # a plan given explicitly wins over the recorded one; no recorded plan: the paper's splice (33 calls)
    with UNetCallCounter(sd_pipe.unet) as counter:
        generate(sd_pipe, loaded, SplicePlan(pre_steps=4, pre_run=2, post_steps=8, post_run=1), **_kw())
        assert counter.calls == 3
        counter.reset()
        loaded.plan = None
        generate(sd_pipe, loaded, **_kw())
        assert counter.calls == 33
    with pytest.raises(TypeError, match="CorrectorPlan"):
        save_crf(crf, tmp_path / "d", {"kind": "corrector"})
    with pytest.raises(TypeError, match="plan must be"):
        generate(sd_pipe, crf, "dpmpp", **_kw())


def test_splice_call_counts_by_hook_equal_the_plan(sd_pipe, tiny):
    crf = tiny.make_crf()
    for plan in (SplicePlan(pre_steps=4, pre_run=2, post_steps=8, post_run=1), SplicePlan(pre_steps=6, pre_run=3,
                                                                                           post_steps=10, post_run=0)):
        with UNetCallCounter(sd_pipe.unet) as counter:
            generate(sd_pipe, crf, plan, **_kw())
        assert counter.calls == plan.unet_calls
    with pytest.raises(TypeError, match="torch.nn.Module"):
        UNetCallCounter(object())


def test_crf_cost_in_unet_calls(sd_pipe, tiny):
    crf = tiny.make_crf()
    unet = sd_pipe.unet
    emb = torch.randn(2, 16, 32)

    def two_unet_calls(z, c):  # a "CRF" that costs two guided UNet calls
        t = torch.tensor(500)
        for _ in range(2):
            unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([c, c]))
        return z

    r = crf_cost(sd_pipe, two_unet_calls, batch_size=2, repeats=5, prompt_embeds=emb)
    assert 1.3 < r.unet_calls < 3.5, r  # about 2
    cheap = crf_cost(sd_pipe, crf, batch_size=2, repeats=3, prompt_embeds=emb)
    assert 0 < cheap.unet_calls < r.unet_calls and cheap.batch_size == 2 and cheap.guided
    assert set(cheap.to_dict()) >= {"unet_calls", "crf_seconds", "unet_seconds", "repeats", "threads"}
    with pytest.raises(ValueError, match="batch_size"):
        crf_cost(sd_pipe, crf, batch_size=3, prompt_embeds=emb)
    with pytest.raises(ValueError, match="repeats"):
        interleaved_medians([lambda: None], repeats=0)


def test_the_plan_travels_with_a_layer_saved_again_and_is_found_from_any_directory(sd_pipe, tmp_path, monkeypatch):
    """Load, save elsewhere (or as a variant), change directory: generate() still runs the trained plan."""
    import energycrf as ec

    torch.manual_seed(0)
    plan = CorrectorPlan("dpmpp", "trailing", 2)
    save_crf(ec.LatentCRF(channels=4, cond_dim=32), tmp_path / "c", plan)
    monkeypatch.chdir(tmp_path)
    crf = ec.LatentCRF.from_pretrained("c")  # a relative path
    assert crf.pretrained_dir == tmp_path / "c"
    crf.save_pretrained(tmp_path / "again")
    crf.half().save_pretrained(tmp_path / "again", variant="fp16")
    assert read_plan(tmp_path / "again") == plan
    monkeypatch.chdir(tmp_path / "again")  # elsewhere: the recorded folder is absolute
    for loaded in (crf.float(), ec.LatentCRF.from_pretrained(tmp_path / "again"),
                   ec.LatentCRF.from_pretrained(tmp_path / "again", variant="fp16", torch_dtype=torch.float32)):
        with UNetCallCounter(sd_pipe.unet) as counter:
            generate(sd_pipe, loaded, **_kw())
        assert counter.calls == 2
    # a plan set on the layer is what a save records; load_crf's crf.plan = None records none
    other = load_crf(tmp_path / "c")
    other.plan = CorrectorPlan("unipc", "trailing", 3)
    other.save_pretrained(tmp_path / "set")
    assert read_plan(tmp_path / "set") == other.plan
    bare = load_crf(tmp_path / "c")
    bare.plan = None
    bare.save_pretrained(tmp_path / "none")
    assert read_plan(tmp_path / "none") is None
    # a loaded layer without any recorded plan: the paper's plan, and a warning that says so
    (tmp_path / "none" / CRF_PLAN_FILE).unlink(missing_ok=True)
    with pytest.warns(UserWarning, match="no plan recorded with this CRF.*paper's plan \\(33 UNet calls\\)"):
        with UNetCallCounter(sd_pipe.unet) as counter:
            generate(sd_pipe, ec.LatentCRF.from_pretrained(tmp_path / "none"), **_kw())
    assert counter.calls == 33
