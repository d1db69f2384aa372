"""The demo's payoff check: the paired comparison against the teacher and its verdict line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.apps.ldm.conftest import needs_text


def _est(value, low, high):
    return {"value": value, "low": low, "high": high, "n": 80}


def _check(mse, psnr, fd, acc=(0.0, -0.01, 0.01)):
    from energycrf.apps.ldm import paired
    from energycrf.integrations import metrics as M

    d = {"latent_mse": _est(*mse), "psnr": _est(*psnr), "frechet": _est(*fd), "accuracy": _est(*acc),
         "vendi": _est(0, -1, 1)}
    return {"crf_calls": 11, "crf_cost": 0.19, "peer": "DPM-Solver++ (trailing)", "peer_calls": 12, "images": 80,
            "difference": d, "beats": paired.beats({k: M.Estimate.from_dict(v) for k, v in d.items()})}


@pytest.mark.parametrize("mse, psnr, fd, tail", [
    ((-2e-4, -3e-4, -1e-4), (1.5, 1.2, 1.8), (-0.5, -0.8, -0.2), "the CRF wins on every measure"),
    ((-2e-4, -3e-4, -1e-4), (1.5, 1.2, 1.8), (-0.5, -1.0, 0.2), "the CRF is closer to the teacher; the Frechet difference is not resolved"),
    ((2e-4, 1e-4, 3e-4), (-1.0, -1.5, -0.5), (0.5, -0.2, 1.2), "DPM-Solver++ (trailing) wins on the teacher measures"),
    ((1e-5, -1e-4, 1e-4), (0.1, -0.2, 0.4), (0.1, -0.3, 0.5), "not resolved at this sample size"),
])
def test_verdict_line_says_who_wins_and_how_sure(mse, psnr, fd, tail):
    from energycrf.apps.ldm.verdict import verdict_line

    line = verdict_line(_check(mse, psnr, fd))
    assert "\n" not in line and line.startswith("Verdict at 12 UNet calls (80 paired images)")
    assert "(11 calls + 0.19 = 11.19)" in line and line.endswith("(three seed sets of 320 images: docs/payoff.md)")
    assert f"-> {tail}" in line


@needs_text
def test_payoff_check_pairs_the_images_and_counts_the_calls(tiny_pipe, tmp_path):
    import energycrf as ec
    from energycrf.apps.ldm.classifier import FashionClassifier
    from energycrf.apps.ldm.verdict import payoff_check, unet_calls, verdict_line
    from energycrf.integrations.bundle import load_crf, save_crf
    from energycrf.integrations.corrector import sample_latents
    from energycrf.integrations.cost import UNetCallCounter
    from energycrf.integrations.plan import CorrectorPlan

    torch.manual_seed(0)
    crf = ec.LatentCRF(channels=4, cond_dim=384, normalization="none")
    with torch.no_grad():
        for p in crf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_crf(crf, tmp_path / "c", CorrectorPlan("unipc", "trailing", 2))
    crf = load_crf(tmp_path / "c")
    clf = FashionClassifier(width=4).eval()
    ref = np.random.default_rng(0).normal(size=(40, 64))
    prompts = [("a photo of a bag", 8), ("a coat", 4)]
    with UNetCallCounter(tiny_pipe.unet) as counter:
        check = payoff_check(tiny_pipe, clf, ref, prompts, [0, 1], teacher_steps=4, n_boot=50, cost_repeats=1, crf=crf)
    assert check["images"] == 4 and check["crf_calls"] == 2 and check["peer_calls"] == 3  # ceil(2 + cost < 1)
    assert check["crf"] == "c" and "LatentCRF corrector c (2 calls + " in verdict_line(check)
    cost_calls = 2  # one warm-up and one timed UNet call
    assert counter.calls == unet_calls(2, teacher_steps=4) * 1 + cost_calls  # the 4 images go in one batch
    # the latent-MSE difference is the mean of the per-image differences against the teacher's latents
    img_p, img_s = ["a photo of a bag"] * 2 + ["a coat"] * 2, [0, 1, 0, 1]
    kw = dict(guidance_scale=4.0, batch_size=16)
    zt = sample_latents(tiny_pipe, img_p, img_s, sampler="ddim", steps=4, **kw)
    za = sample_latents(tiny_pipe, img_p, img_s, crf=crf, **kw)
    zb = sample_latents(tiny_pipe, img_p, img_s, sampler="dpmpp", spacing="trailing", steps=3, **kw)
    per = ((za - zt) ** 2).flatten(1).mean(1) - ((zb - zt) ** 2).flatten(1).mean(1)
    assert check["difference"]["latent_mse"]["value"] == pytest.approx(float(per.mean()), rel=1e-5)
    assert set(check["beats"]) == {"teacher", "frechet", "accuracy_not_lower", "all"}
    with pytest.raises(ValueError, match="corrector"):
        splice = ec.LatentCRF(channels=4, cond_dim=384)
        splice.plan = None
        payoff_check(tiny_pipe, clf, ref, prompts, [0, 1], crf=splice)
