"""generate(pipe, crf, plan): the splice inside unmodified diffusers pipelines (tiny, offline)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)

from energycrf.integrations.diffusers import SplicedDDIMScheduler, generate  # noqa: E402
from energycrf.integrations.plan import SplicePlan  # noqa: E402
from energycrf.integrations.sampler import NoiseSchedule  # noqa: E402

SD15_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading", num_train_timesteps=1000,
)
SIGMA_CONFIG = {k: v for k, v in SD15_SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")}


@pytest.fixture
def rec_cls(tiny):
    return tiny.UNetCallRecorder

# diffusers' Euler/DPM schedulers hand torch tensors to numpy 2 (a diffusers-side deprecation)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

PAPER_TIMESTEPS = list(range(976, 225, -25)) + [21, 1]  # SD 1.5 grid: 31 of 40, then last 2 of 50
H = W = 8  # latent size of the tiny pipelines


def _embeds(batch=1, seed=3):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(batch, 16, 32, generator=g)
    neg = torch.randn(batch, 16, 32, generator=g)
    return pos, neg


def _sd_kwargs(seed=0, batch=1, **extra):
    pos, neg = _embeds(batch)
    kw = dict(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )
    kw.update(extra)
    return kw


def _reference_latent_at(pipe, scheduler, num_steps, after_step, **kw):
    """Latents after step `after_step` of a plain `num_steps` run (reference for the splice point)."""
    seen = {}

    def grab(p, i, t, tensors):
        if i == after_step:
            seen["z"] = tensors["latents"].clone()
        return tensors

    saved = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        pipe(num_inference_steps=num_steps, callback_on_step_end=grab, **kw)
    finally:
        pipe.scheduler = saved
    return seen["z"]


def test_paper_plan_runs_33_unet_calls_at_the_expected_timesteps(sd_pipe, standin_crf, rec_cls):
    with rec_cls(sd_pipe.unet) as rec:
        out = generate(sd_pipe, standin_crf, **_sd_kwargs())
    assert rec.timesteps == PAPER_TIMESTEPS
    assert len(rec.timesteps) == SplicePlan().unet_calls == 33
    z = out.images
    assert z.shape == (1, 4, H, W) and torch.isfinite(z).all()
    assert len(standin_crf.calls) == 1


def test_plain_call_runs_50(sd_pipe, rec_cls):
    with rec_cls(sd_pipe.unet) as rec:
        sd_pipe(num_inference_steps=50, **_sd_kwargs())
    assert len(rec.timesteps) == 50 and rec.timesteps[-2:] == [21, 1]


def test_crf_sees_the_latent_after_31_of_40_and_the_positive_embeddings(sd_pipe, standin_crf):
    pos, _ = _embeds()
    generate(sd_pipe, standin_crf, **_sd_kwargs())
    (z_in, c_in), = standin_crf.calls
    ref = _reference_latent_at(sd_pipe, DDIMScheduler(**SD15_SCHEDULER), 40, 30, **_sd_kwargs())
    torch.testing.assert_close(z_in, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(c_in, pos)  # [negative; positive] -> the positive half


@pytest.mark.parametrize("crf_output", ["clean", "post"])
def test_crf_output_enters_the_post_steps_as_the_plan_says(sd_pipe, standin_crf, crf_output, rec_cls):
    plan = SplicePlan(crf_output=crf_output)
    with rec_cls(sd_pipe.unet) as rec:
        generate(sd_pipe, standin_crf, plan, **_sd_kwargs())
    (z_s, c), = standin_crf.calls
    standin_crf.calls.clear()
    with torch.no_grad():
        m = standin_crf(z_s, c)
    unet_in = rec.inputs[31][:1]  # CFG batch [z; z]: first half, at t = 21
    noise = NoiseSchedule.from_diffusers(DDIMScheduler(**SD15_SCHEDULER))
    if crf_output == "post":
        expected = m
    else:
        a_s, a_p = noise.a(201), noise.a(21)
        eps = (z_s - a_s**0.5 * m) / (1 - a_s) ** 0.5
        expected = a_p**0.5 * m + (1 - a_p) ** 0.5 * eps
    torch.testing.assert_close(unet_in, expected, rtol=1e-5, atol=1e-5)


def test_pipeline_is_restored_and_usable(sd_pipe, standin_crf):
    before = sd_pipe(num_inference_steps=5, **_sd_kwargs()).images
    sched, config = sd_pipe.scheduler, dict(sd_pipe.config)
    standin_crf.train()
    generate(sd_pipe, standin_crf, **_sd_kwargs())
    assert sd_pipe.scheduler is sched and dict(sd_pipe.config) == config
    assert type(sd_pipe.scheduler) is DDIMScheduler
    assert standin_crf.training  # mode restored
    after = sd_pipe(num_inference_steps=5, **_sd_kwargs()).images
    torch.testing.assert_close(before, after)


def test_pipeline_restored_when_the_crf_fails(sd_pipe):
    class Broken(torch.nn.Module):
        def forward(self, x, c=None):
            raise RuntimeError("boom")

    sched = sd_pipe.scheduler
    with pytest.raises(RuntimeError, match="boom"):
        generate(sd_pipe, Broken(), **_sd_kwargs())
    assert sd_pipe.scheduler is sched and not sd_pipe._interrupt


def test_crf_returning_wrong_shape_or_nan_is_reported(sd_pipe):
    with pytest.raises(ValueError, match="shaped like its input"):
        generate(sd_pipe, lambda x, c: x[:, :2], **_sd_kwargs())
    with pytest.raises(FloatingPointError, match="non-finite"):
        generate(sd_pipe, lambda x, c: x * float("nan"), **_sd_kwargs())


def test_decoded_output_and_user_callback(sd_pipe, standin_crf):
    seen = []

    def user_cb(pipe, i, t, tensors):
        seen.append(int(t))
        return tensors

    out = generate(sd_pipe, standin_crf, callback_on_step_end=user_cb, **_sd_kwargs(output_type="pt"))
    assert out.images.shape == (1, 3, 2 * H, 2 * W) and torch.isfinite(out.images).all()
    assert seen == PAPER_TIMESTEPS


@pytest.mark.parametrize(
    "make",
    [
        lambda: EulerDiscreteScheduler(**SIGMA_CONFIG),
        lambda: DPMSolverMultistepScheduler(solver_order=1, **SIGMA_CONFIG),
    ],
    ids=["euler", "dpmsolver++-order1"],
)
def test_sigma_space_and_multistep_splices_agree_with_ddim(sd_pipe, make, tiny, rec_cls):
    """First-order Euler (sigma space) and DPM-Solver++ are DDIM in other coordinates: the
    spliced results must coincide with the DDIM splice, which checks the sigma <-> VP
    conversions and the two-call splice."""
    plan = SplicePlan(post_run=2)
    sched = sd_pipe.scheduler
    try:
        # Euler and DPM-Solver++ end at sigma = 0: compare with DDIM ending at alpha_bar = 1
        sd_pipe.scheduler = DDIMScheduler(**{**SD15_SCHEDULER, "set_alpha_to_one": True})
        crf_a = tiny.make_crf()
        ref = generate(sd_pipe, crf_a, plan, **_sd_kwargs()).images
        sd_pipe.scheduler = make()
        crf_b = tiny.make_crf()
        with rec_cls(sd_pipe.unet) as rec:
            out = generate(sd_pipe, crf_b, plan, **_sd_kwargs()).images
        assert rec.timesteps == PAPER_TIMESTEPS
        torch.testing.assert_close(crf_b.calls[0][0], crf_a.calls[0][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    finally:
        sd_pipe.scheduler = sched


def test_dpmsolver_second_order_splice_runs(sd_pipe, standin_crf, rec_cls):
    sched = sd_pipe.scheduler
    sd_pipe.scheduler = DPMSolverMultistepScheduler.from_config(sched.config)
    try:
        with rec_cls(sd_pipe.unet) as rec:
            z = generate(sd_pipe, standin_crf, **_sd_kwargs()).images
        assert rec.timesteps == PAPER_TIMESTEPS and torch.isfinite(z).all()
        assert type(sd_pipe.scheduler) is DPMSolverMultistepScheduler
    finally:
        sd_pipe.scheduler = sched


def test_no_post_steps_returns_the_crf_output(sd_pipe, standin_crf, rec_cls):
    plan = SplicePlan(pre_run=35, post_run=0)
    with rec_cls(sd_pipe.unet) as rec:
        z = generate(sd_pipe, standin_crf, plan, **_sd_kwargs()).images
    assert len(rec.timesteps) == 35
    (z_s, c), = standin_crf.calls
    standin_crf.calls.clear()
    torch.testing.assert_close(z, standin_crf(z_s, c))


@pytest.mark.parametrize(
    "sched_cls,needle",
    [
        (PNDMScheduler, "PNDMScheduler cannot be spliced"),
        (EulerAncestralDiscreteScheduler, "fresh noise"),
        (LMSDiscreteScheduler, "LMSDiscreteScheduler cannot be spliced"),
    ],
)
def test_unsupported_schedulers_are_refused(sd_pipe, standin_crf, sched_cls, needle):
    sched = sd_pipe.scheduler
    sd_pipe.scheduler = sched_cls.from_config(sched.config)
    try:
        with pytest.raises(ValueError, match=needle) as err:
            generate(sd_pipe, standin_crf, **_sd_kwargs())
        assert "DDIMScheduler.from_config" in str(err.value)
        assert type(sd_pipe.scheduler) is sched_cls
    finally:
        sd_pipe.scheduler = sched
    assert not standin_crf.calls


def test_karras_sigmas_refused(sd_pipe, standin_crf):
    sched = sd_pipe.scheduler
    sd_pipe.scheduler = DPMSolverMultistepScheduler.from_config(sched.config, use_karras_sigmas=True)
    try:
        with pytest.raises(ValueError, match="use_karras_sigmas"):
            generate(sd_pipe, standin_crf, **_sd_kwargs())
    finally:
        sd_pipe.scheduler = sched


@pytest.mark.parametrize("key,value", [("num_inference_steps", 50), ("timesteps", [999, 500, 1]), ("denoising_end", 0.8)])
def test_schedule_arguments_refused(sd_pipe, standin_crf, key, value):
    with pytest.raises(ValueError, match=key):
        generate(sd_pipe, standin_crf, **_sd_kwargs(**{key: value}))


def test_bad_arguments(sd_pipe, standin_crf):
    with pytest.raises(TypeError, match="plan"):
        generate(sd_pipe, standin_crf, plan=(31, 40))
    with pytest.raises(TypeError, match="crf"):
        generate(sd_pipe, "crf")
    with pytest.raises(ValueError, match="condition"):
        generate(sd_pipe, standin_crf, condition="text")
    with pytest.raises(ValueError, match="pooled"):
        generate(sd_pipe, standin_crf, condition="pooled", **_sd_kwargs())  # SD has no pooled embedding
    with pytest.raises(ValueError, match="not below the splice timestep"):
        generate(sd_pipe, standin_crf, SplicePlan(post_run=20), **_sd_kwargs())


def test_spliced_ddim_equals_ddim_without_a_table():
    a, b = DDIMScheduler(**SD15_SCHEDULER), SplicedDDIMScheduler(**SD15_SCHEDULER)
    a.set_timesteps(40)
    b.set_timesteps(timesteps=a.timesteps.tolist())
    g = torch.Generator().manual_seed(0)
    z, e = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in a.timesteps[:5]:
        torch.testing.assert_close(b.step(e, t, z).prev_sample, a.step(e, t, z).prev_sample, rtol=1e-5, atol=1e-6)
        v = torch.randn(2, 4, 8, 8, generator=g)
        torch.testing.assert_close(  # stochastic DDIM (eta > 0) with the same noise
            b.step(e, t, z, eta=0.5, variance_noise=v).prev_sample,
            a.step(e, t, z, eta=0.5, variance_noise=v).prev_sample, rtol=1e-5, atol=1e-6,
        )
    for clipped in (False, True):  # clip_sample, with and without use_clipped_model_output
        a2 = DDIMScheduler(**{**SD15_SCHEDULER, "clip_sample": True, "clip_sample_range": 0.5})
        b2 = SplicedDDIMScheduler.from_config(a2.config)
        a2.set_timesteps(40)
        b2.set_timesteps(timesteps=a2.timesteps.tolist())
        torch.testing.assert_close(
            b2.step(e, 501, 3 * z, use_clipped_model_output=clipped).prev_sample,
            a2.step(e, 501, 3 * z, use_clipped_model_output=clipped).prev_sample, rtol=1e-5, atol=1e-6,
        )
    with pytest.raises(ValueError, match="strictly decreasing"):
        b.set_timesteps(timesteps=[1, 21])


def test_sdxl_ddim_and_euler(sdxl_pipe, standin_crf, tiny, rec_cls):
    kw = dict(prompt="a red cube", guidance_scale=5.0, output_type="latent")
    crf = tiny.make_crf(64)
    sched = sdxl_pipe.scheduler  # EulerDiscreteScheduler, SDXL's default
    with rec_cls(sdxl_pipe.unet) as rec:
        z_euler = generate(sdxl_pipe, crf, generator=torch.Generator().manual_seed(0), **kw).images
    assert rec.timesteps == PAPER_TIMESTEPS and sdxl_pipe.scheduler is sched
    (_, c), = crf.calls
    assert c.shape == (1, 16, 64)  # positive token embeddings of both encoders
    sdxl_pipe.scheduler = DDIMScheduler.from_config(sched.config, set_alpha_to_one=True, clip_sample=False)
    try:
        crf2 = tiny.make_crf(64)
        with rec_cls(sdxl_pipe.unet) as rec:
            z_ddim = generate(sdxl_pipe, crf2, generator=torch.Generator().manual_seed(0), **kw).images
        assert rec.timesteps == PAPER_TIMESTEPS
    finally:
        sdxl_pipe.scheduler = sched
    assert z_ddim.shape == (1, 4, H, W) and torch.isfinite(z_ddim).all()
    torch.testing.assert_close(z_euler, z_ddim, rtol=1e-4, atol=1e-4)  # Euler == DDIM (first order)
    pooled_crf = tiny.make_crf(32)
    generate(sdxl_pipe, pooled_crf, condition="pooled", generator=torch.Generator().manual_seed(0), **kw)
    assert pooled_crf.calls[0][1].shape == (1, 32)


def test_spliced_ddim_from_config_keeps_the_noise_schedule():
    ref = DDIMScheduler(**SD15_SCHEDULER)
    s = SplicedDDIMScheduler.from_config(ref.config)
    torch.testing.assert_close(s.alphas_cumprod, ref.alphas_cumprod)
    assert dict(s.config) == dict(ref.config)


def test_pipeline_and_real_latent_crf_saved_and_reloaded(tiny, tokenizer_dir, tmp_path, rec_cls):
    """The real ec.LatentCRF in the pipeline; pipeline + CRF + plan round-trip through a local directory."""
    import energycrf as ec
    from energycrf.integrations.diffusers import load_pretrained, save_pretrained

    pipe = tiny.build_sd(tokenizer_dir)
    torch.manual_seed(0)
    crf = ec.LatentCRF(channels=4, cond_dim=32)
    with torch.no_grad():
        for p in crf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    plan = SplicePlan(pre_run=30, post_run=3, crf_output="post")
    kw = dict(prompt="a red cube", guidance_scale=5.0, output_type="latent")
    with rec_cls(pipe.unet) as rec:
        before = generate(pipe, crf, plan, generator=torch.Generator().manual_seed(0), **kw).images
    assert len(rec.timesteps) == 33 and torch.isfinite(before).all()
    save_pretrained(tmp_path / "bundle", pipe, crf, plan)
    pipe2, crf2, plan2 = load_pretrained(tmp_path / "bundle")
    pipe2.set_progress_bar_config(disable=True)
    assert type(pipe2) is type(pipe) and type(pipe2.scheduler) is DDIMScheduler
    assert plan2 == plan and isinstance(crf2, ec.LatentCRF)
    after = generate(pipe2, crf2, plan2, generator=torch.Generator().manual_seed(0), **kw).images
    torch.testing.assert_close(after, before)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pretrained(tmp_path)


def test_batched_prompts_and_images_per_prompt_two_call_path(sd_pipe, tiny, rec_cls):
    pos, neg = _embeds(batch=2)
    kw = dict(prompt_embeds=pos, negative_prompt_embeds=neg, guidance_scale=5.0, num_images_per_prompt=2,
              output_type="latent")
    sched = sd_pipe.scheduler
    try:
        sd_pipe.scheduler = DDIMScheduler(**{**SD15_SCHEDULER, "set_alpha_to_one": True})
        crf_a = tiny.make_crf()
        ref = generate(sd_pipe, crf_a, generator=torch.Generator().manual_seed(0), **kw).images
        sd_pipe.scheduler = EulerDiscreteScheduler(**SIGMA_CONFIG)
        crf_b = tiny.make_crf()
        with rec_cls(sd_pipe.unet) as rec:
            out = generate(sd_pipe, crf_b, generator=torch.Generator().manual_seed(0), **kw).images
    finally:
        sd_pipe.scheduler = sched
    assert out.shape == (4, 4, H, W) and len(rec.timesteps) == 33
    c = crf_b.calls[0][1]
    torch.testing.assert_close(c, pos.repeat_interleave(2, dim=0))  # positive half, per image
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_interrupted_before_the_splice_is_an_error(sd_pipe, standin_crf):
    def stop(pipe, i, t, tensors):
        if i == 3:
            pipe._interrupt = True
        return tensors

    with pytest.raises(RuntimeError, match="the CRF ran 0 times"):
        generate(sd_pipe, standin_crf, callback_on_step_end=stop, **_sd_kwargs())
    assert not sd_pipe._interrupt


@given(
    pre_steps=st.integers(4, 20),
    pre_frac=st.floats(0, 1),
    post_steps=st.integers(4, 30),
    post_run=st.integers(0, 3),
    crf_output=st.sampled_from(["clean", "post"]),
)
def test_drawn_plans_call_the_unet_where_the_plan_says(sd_pipe, tiny, pre_steps, pre_frac, post_steps, post_run, crf_output):
    """Any valid plan: the UNet runs exactly at plan.schedule(...).timesteps, and the CRF sees
    the latent a plain pre_steps-step DDIM run has after pre_run steps."""
    pre_run = 1 + int(pre_frac * (pre_steps - 2))
    if crf_output == "post" and post_run == 0:
        post_run = 1
    plan = SplicePlan(pre_steps, pre_run, post_steps, post_run, crf_output)
    try:
        sched = plan.schedule_for(sd_pipe.scheduler.config)
    except ValueError:
        with pytest.raises(ValueError, match="not below the splice timestep"):
            generate(sd_pipe, tiny.make_crf(), plan, **_sd_kwargs())
        return
    crf = tiny.make_crf()
    with tiny.UNetCallRecorder(sd_pipe.unet) as rec:
        z = generate(sd_pipe, crf, plan, **_sd_kwargs()).images
    assert rec.timesteps == list(sched.timesteps) and len(rec.timesteps) == plan.unet_calls
    assert len(crf.calls) == 1 and z.shape == (1, 4, H, W) and torch.isfinite(z).all()
    ref = _reference_latent_at(sd_pipe, DDIMScheduler(**SD15_SCHEDULER), pre_steps, pre_run - 1, **_sd_kwargs())
    torch.testing.assert_close(crf.calls[0][0], ref, rtol=1e-4, atol=1e-4)
