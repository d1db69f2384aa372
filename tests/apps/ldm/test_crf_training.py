"""LatentCRF stage 1 / stage 2 glue on tiny data: the trainer runs, losses fall, distillation shards feed it."""

from __future__ import annotations

import json

import torch

from energycrf.apps.ldm import crf_training as CT
from tests.apps.ldm.conftest import needs_text


def _bank():
    return torch.randn(20, 5, 384), [list(range(2 * k, 2 * k + 2)) for k in range(10)], torch.zeros(5, 384)


def test_captioned_latents_are_deterministic_and_class_consistent():
    bank = _bank()
    z, y = torch.randn(30, 4, 8, 8), torch.arange(30) % 10
    ds = CT.CaptionedLatents(z, y, bank, seed=1)
    a, b = ds[7], CT.CaptionedLatents(z, y, bank, seed=1)[7]
    torch.testing.assert_close(a["prompt_embeds"], b["prompt_embeds"])
    for i in range(30):
        item = ds[i]
        k = int(y[i])
        assert any(torch.equal(item["prompt_embeds"], bank[0][j]) for j in bank[1][k])
        assert torch.equal(item["z"], z[i]) and item["index"] == i


def test_alpha_range_brackets_the_splice_point():
    from energycrf.apps.ldm.train import build_scheduler

    cfg = build_scheduler().config
    lo, hi = CT.alpha_range(cfg, 101, 301)
    a201 = float(build_scheduler().alphas_cumprod[201])
    assert lo < a201 < hi and 0 < lo and hi < 1


def test_stage1_reduces_the_denoising_loss(tmp_path):
    torch.manual_seed(0)
    # smooth latents (a strong spatial prior the CRF can exploit)
    base = torch.randn(64, 4, 2, 2)
    z = torch.nn.functional.interpolate(base, size=(8, 8), mode="bilinear", align_corners=False)
    ds = CT.CaptionedLatents(z, torch.arange(64) % 10, _bank())
    crf = CT.build_crf(hidden_channels=8, attention_dim=8, num_iterations=2)
    res = CT.train_stage1(crf, ds, tmp_path / "s1", steps=40, noise_level=(0.5, 0.7), batch_size=16, lr=3e-3,
                          warmup=2, adversarial=True, progress=False)
    assert res["step"] == 40 and (tmp_path / "s1" / "latest").is_file()
    log = [json.loads(line) for line in (tmp_path / "s1" / "log.jsonl").read_text().splitlines()]
    assert {"loss_main", "loss_adv", "loss_disc"} <= set(log[0])
    assert log[-1]["loss_main"] < log[0]["loss_main"]


@needs_text
def test_stage2_on_distillation_shards_of_a_tiny_pipeline(tmp_path, tiny_pipe):
    from energycrf.integrations.distill import generate_distillation_data
    from energycrf.integrations.plan import SplicePlan
    from energycrf.training import latest_checkpoint

    plan = SplicePlan(pre_steps=4, pre_run=2, post_steps=8, post_run=1)
    prompts = CT.distillation_prompts(6)
    assert len(set(prompts)) > 1
    generate_distillation_data(tiny_pipe, prompts, tmp_path / "shards", plan, batch_size=3, shard_size=6,
                               guidance_scale=2.0, progress=False)
    crf = CT.build_crf(hidden_channels=8, attention_dim=8, num_iterations=2)
    z = torch.randn(32, 4, 8, 8)
    CT.train_stage1(crf, CT.CaptionedLatents(z, torch.arange(32) % 10, (torch.randn(20, 16, 384),) + _bank()[1:]),
                    tmp_path / "s1", steps=2, noise_level=(0.5, 0.7), batch_size=8, warmup=1, adversarial=False,
                    progress=False)
    init = latest_checkpoint(tmp_path / "s1")
    s1_weights = {k: v.clone() for k, v in crf.state_dict().items()}
    crf2 = CT.build_crf(hidden_channels=8, attention_dim=8, num_iterations=2)
    res = CT.train_stage2(crf2, tmp_path / "shards", tmp_path / "s2", steps=3, init=init, batch_size=3,
                          progress=False)
    assert res["step"] == 3
    # started from stage 1: weights moved only a little from the stage-1 ones, not from a fresh init
    moved = max((crf2.state_dict()[k] - v).abs().max().item() for k, v in s1_weights.items() if v.is_floating_point())
    assert 0 < moved < 0.05
