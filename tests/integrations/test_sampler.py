"""The plain sampler loop: DDIM math against diffusers, exact recovery with oracle models, the splice."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from energycrf.integrations.plan import SplicePlan
from energycrf.integrations.sampler import (
    NoiseSchedule,
    crf_to_target,
    ddim_sample,
    ddim_step,
    predict_x0_eps,
    splice_sample,
    teacher_pair,
)

SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _oracle(x0: torch.Tensor, schedule: NoiseSchedule, prediction: str, calls: list):
    """Exact denoiser for data concentrated at x0: eps(z, t) = (z - sqrt(a) x0) / sqrt(1 - a)."""

    def model(z, t, cond):
        calls.append(int(t[0]))
        a = schedule.a(int(t[0]))
        eps = (z - a**0.5 * x0) / (1 - a) ** 0.5
        if prediction == "epsilon":
            return eps
        if prediction == "x0":
            return x0.expand_as(z).clone()
        return a**0.5 * eps - (1 - a) ** 0.5 * x0

    return model


def test_schedule_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for kind in ("linear", "scaled_linear"):
        ref = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule=kind)
        ours = NoiseSchedule.from_betas(0.00085, 0.012, kind)
        torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
        assert NoiseSchedule.from_diffusers(ref).a(-1) == pytest.approx(1.0)
    noise = NoiseSchedule.from_betas(**SD15)
    assert noise.sigma(500) == pytest.approx(math.sqrt((1 - noise.a(500)) / noise.a(500)))


@pytest.mark.parametrize("prediction,diffusers_name", [("epsilon", "epsilon"), ("v", "v_prediction"), ("x0", "sample")])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_equals_diffusers(prediction, diffusers_name, eta):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(**SD15, prediction_type=diffusers_name, clip_sample=False, steps_offset=1)
    ref.set_timesteps(40)
    noise = NoiseSchedule.from_diffusers(ref)
    g = torch.Generator().manual_seed(0)
    z, out, var = (torch.randn(2, 4, 6, 6, generator=g) for _ in range(3))
    for t in (976, 501, 26):
        expected = ref.step(out, t, z, eta=eta, variance_noise=var).prev_sample
        got, _ = ddim_step(out, z, noise.a(t), noise.a(t - 25), prediction, eta, var)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@given(a=st.floats(0.01, 0.99), prediction=st.sampled_from(["epsilon", "v", "x0"]))
def test_predictions_recover_x0_and_eps_exactly(a, prediction):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    z = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    out = {"epsilon": eps, "x0": x0, "v": a**0.5 * eps - (1 - a) ** 0.5 * x0}[prediction]
    got_x0, got_eps = predict_x0_eps(out, z, a, prediction)
    torch.testing.assert_close(got_x0, x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_eps, eps, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("crf_output", ["clean", "post"])
def test_splice_with_oracle_model_and_crf_lands_on_the_data(prediction, crf_output):
    """With an exact denoiser, DDIM keeps z_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps0 for the initial
    noise eps0; the CRF must see that latent at t_s = 201 and the run must end at x0."""
    noise = NoiseSchedule.from_betas(**SD15)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    eps0 = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    calls, crf_inputs = [], []

    def crf(z, c):
        crf_inputs.append((z, c))
        if crf_output == "clean":
            return x0.clone()
        a_s, a_p = noise.a(201), noise.a(21)
        eps = (z - a_s**0.5 * x0) / (1 - a_s) ** 0.5
        return a_p**0.5 * x0 + (1 - a_p) ** 0.5 * eps

    plan = SplicePlan(crf_output=crf_output)
    cond = torch.randn(2, 77, 16, dtype=torch.float64)
    out = splice_sample(
        _oracle(x0, noise, prediction, calls), crf, noise.a(976) ** 0.5 * x0 + (1 - noise.a(976)) ** 0.5 * eps0,
        noise, plan, crf_cond=cond,
        prediction=prediction, steps_offset=1,
    )
    assert calls == list(range(976, 225, -25)) + [21, 1]
    (z_s, c), = crf_inputs
    assert c is cond
    torch.testing.assert_close(z_s, noise.a(201) ** 0.5 * x0 + (1 - noise.a(201)) ** 0.5 * eps0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out, x0, rtol=1e-9, atol=1e-9)


def test_crf_to_target_clean_is_the_ddim_jump():
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    a_s, a_p = 0.3, 0.9
    z_s = a_s**0.5 * x0 + (1 - a_s) ** 0.5 * eps
    torch.testing.assert_close(crf_to_target(x0, z_s, a_s, a_p, "clean"), a_p**0.5 * x0 + (1 - a_p) ** 0.5 * eps)
    assert crf_to_target(x0, z_s, a_s, 1.0, "clean") is x0
    assert crf_to_target(z_s, x0, a_s, a_p, "post") is z_s
    with pytest.raises(ValueError, match="crf_output"):
        crf_to_target(x0, z_s, a_s, a_p, "noisy")


@pytest.mark.parametrize("teacher", ["plan", "full"])
@pytest.mark.parametrize("crf_output", ["clean", "post"])
def test_teacher_pair_with_oracle(teacher, crf_output):
    noise = NoiseSchedule.from_betas(**SD15)
    g = torch.Generator().manual_seed(4)
    x0, eps0 = torch.randn(1, 4, 4, 4, generator=g, dtype=torch.float64), torch.randn(1, 4, 4, 4, generator=g, dtype=torch.float64)
    calls = []
    on = lambda t: noise.a(t) ** 0.5 * x0 + (1 - noise.a(t)) ** 0.5 * eps0  # noqa: E731
    z_s, z_f = teacher_pair(
        _oracle(x0, noise, "epsilon", calls), on(976 if teacher == "plan" else 981), noise,
        SplicePlan(crf_output=crf_output), steps_offset=1, teacher=teacher,
    )
    assert len(calls) == (31 + 11 if teacher == "plan" else 50)
    torch.testing.assert_close(z_s, on(201), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(z_f, x0 if crf_output == "clean" else on(21), rtol=1e-9, atol=1e-9)


def test_real_latent_crf_in_the_sampler_loop():
    import energycrf as ec

    noise = NoiseSchedule.from_betas(**SD15)
    torch.manual_seed(0)
    crf = ec.LatentCRF(channels=4, cond_dim=16).eval()
    calls = []
    x0 = torch.randn(2, 4, 8, 8)
    out = splice_sample(
        _oracle(x0, noise, "epsilon", calls), crf, torch.randn(2, 4, 8, 8), noise, crf_cond=torch.randn(2, 7, 16),
        steps_offset=1,
    )
    assert len(calls) == 33 and out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()


def test_errors():
    noise = NoiseSchedule.from_betas(**SD15)
    z = torch.randn(1, 4, 4, 4)
    with pytest.raises(ValueError, match="must return a tensor shaped like the latent"):
        ddim_sample(lambda z, t, c: z[:, :1], z, noise, [500, 200])
    with pytest.raises(FloatingPointError, match="non-finite latent after the DDIM step at t=500"):
        ddim_sample(lambda z, t, c: z * float("inf"), z, noise, [500, 200])
    with pytest.raises(ValueError, match="prediction must be one of"):
        ddim_sample(lambda z, t, c: z, z, noise, [500], prediction="score")
    with pytest.raises(ValueError, match="each step must lower the timestep"):
        ddim_sample(lambda z, t, c: z, z, noise, [500, 200], prev_timesteps=[600, -1])
    with pytest.raises(ValueError, match=r"z must be \[B, C, H, W\]"):
        ddim_sample(lambda z, t, c: z, z[0], noise, [500])
    with pytest.raises(ValueError, match="crf must return a tensor shaped like its input"):
        splice_sample(lambda z, t, c: z, lambda z, c: z.sum(), z, noise, steps_offset=1)
    with pytest.raises(TypeError, match="plan must be a SplicePlan"):
        splice_sample(lambda z, t, c: z, lambda z, c: z, z, noise, plan=(31, 40))
    with pytest.raises(ValueError, match="timestep must be in"):
        noise.a(1000)
    with pytest.raises(ValueError, match="non-increasing"):
        NoiseSchedule(torch.tensor([0.5, 0.9]))
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule.from_betas(beta_schedule="cosine")
