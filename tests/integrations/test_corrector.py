"""sample_latents (paired images across methods), corrector_pairs (cached) and fit_corrector."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from energycrf.integrations.corrector import corrector_pairs, fit_corrector, sample_latents  # noqa: E402
from energycrf.integrations.cost import UNetCallCounter  # noqa: E402
from energycrf.integrations.plan import CorrectorPlan  # noqa: E402

PROMPTS = ["a red cube", "a blue ball", "a red cube"]
SEEDS = [3, 4, 5]


def test_sample_latents_pairs_images_and_ignores_batching(sd_pipe, tiny):
    kw = dict(sampler="dpmpp", spacing="trailing", steps=2, guidance_scale=3.0)
    with UNetCallCounter(sd_pipe.unet) as counter:
        z, e = sample_latents(sd_pipe, PROMPTS, SEEDS, batch_size=2, return_embeds=True, **kw)
    assert z.shape == (3, 4, 8, 8) and e.shape[0] == 3 and counter.calls == 2 * 2  # two pipeline calls of 2 steps
    z1 = sample_latents(sd_pipe, PROMPTS, SEEDS, batch_size=1, **kw)
    torch.testing.assert_close(z1, z, atol=1e-4, rtol=1e-4)  # batch composition: float rounding only
    torch.testing.assert_close(e[0], e[2])  # the same prompt, the same condition
    # the same seed and prompt -> the same image; a CRF method through generate() with its plan
    crf = tiny.make_crf()
    zc = sample_latents(sd_pipe, PROMPTS, SEEDS, crf=crf, plan=CorrectorPlan("dpmpp", "trailing", 2), batch_size=3,
                        guidance_scale=3.0)
    with torch.no_grad():
        torch.testing.assert_close(zc, crf(z, e), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="paired"):
        sample_latents(sd_pipe, PROMPTS, SEEDS[:2], **kw)
    with pytest.raises(ValueError, match="steps"):
        sample_latents(sd_pipe, PROMPTS, SEEDS, steps=0)


def test_corrector_pairs_are_cached(sd_pipe, tmp_path):
    plan = CorrectorPlan("unipc", "trailing", 2)
    with UNetCallCounter(sd_pipe.unet) as counter:
        d = corrector_pairs(sd_pipe, PROMPTS, SEEDS, plan, teacher_steps=4, cache_dir=tmp_path, progress=False)
        assert counter.calls == 4 + 2
        again = corrector_pairs(sd_pipe, PROMPTS, SEEDS, plan, teacher_steps=4, cache_dir=tmp_path, progress=False)
        assert counter.calls == 4 + 2  # nothing generated the second time
        other = corrector_pairs(sd_pipe, PROMPTS, SEEDS, CorrectorPlan("unipc", "trailing", 3), teacher_steps=4,
                                cache_dir=tmp_path, progress=False)
        assert counter.calls == 4 + 2 + 3  # the teacher is shared by plans
    for k in d:
        torch.testing.assert_close(again[k], d[k])
    torch.testing.assert_close(other["z_teacher"], d["z_teacher"])
    assert not torch.allclose(other["z_in"], d["z_in"])
    with pytest.raises(TypeError, match="CorrectorPlan"):
        corrector_pairs(sd_pipe, PROMPTS, SEEDS, "unipc")


def test_fit_corrector_learns_a_correction():
    import energycrf as ec

    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 4, 6, 6, generator=g)
    target = 1.15 * z + 0.1  # the kind of bias a few-step sampler leaves
    torch.manual_seed(0)
    crf = ec.LatentCRF(channels=4, cond_dim=None, normalization="none")
    hist = fit_corrector(crf, z, target, None, steps=150, batch_size=16, lr=1e-2, val_every=50, progress=False)
    assert hist["val_step"] == [0, 50, 100, 150] and len(hist["loss"]) == 150
    assert hist["val_loss"][-1] < 0.2 * hist["identity_val_loss"], hist
    assert hist["train_size"] + hist["val_size"] == 64 and not crf.training
    # a pixel term through a frozen "decoder" (a fixed 2x upsampling of channel 0)
    dec = lambda x: torch.nn.functional.interpolate(x[:, :1], scale_factor=2)  # noqa: E731
    h2 = fit_corrector(crf, z, target, None, steps=20, batch_size=16, lr=1e-2, val_every=10, progress=False,
                       decoder=dec, x_target=dec(target), pixel_weight=1.0)
    assert len(h2["val_pixel_loss"]) == 3 and h2["val_pixel_loss"][-1] < 0.2
    with pytest.raises(ValueError, match="decoder"):
        fit_corrector(crf, z, target, pixel_weight=1.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        fit_corrector(crf, z, target, lr_schedule="step")
    with pytest.raises(ValueError, match="same shape"):
        fit_corrector(crf, z, target[:3])
    with pytest.raises(ValueError, match="val_fraction"):
        fit_corrector(crf, z, target, val_fraction=1.0)
