"""Distillation shards: written from a tiny pipeline, read back, consistent with generate(), resumable, per rank."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, EulerDiscreteScheduler  # noqa: E402
from safetensors import safe_open  # noqa: E402

from energycrf.integrations.diffusers import generate  # noqa: E402
from energycrf.integrations.distill import (  # noqa: E402
    FORMAT,
    DistillationShards,
    generate_distillation_data,
    load_shards,
    read_shard,
    write_shard,
)
from energycrf.integrations.plan import SplicePlan  # noqa: E402

PROMPTS = ["a red cube", "a blue ball", "green grass", "a cat", "the sea"]


@pytest.fixture(scope="module")
def shards(sd_pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    paths = generate_distillation_data(
        sd_pipe, PROMPTS, out, batch_size=2, shard_size=2, seed=10, guidance_scale=5.0, rank=0, world_size=1,
        progress=False,
    )
    return out, paths


def test_shards_read_back(shards):
    out, paths = shards
    assert [p.name for p in paths] == [f"rank000-of-001-{k:05d}.safetensors" for k in range(3)]
    data = DistillationShards(out)
    assert len(data) == 5 and data.counts == [2, 2, 1]
    item = data[4]
    assert item["z_s"].shape == (4, 8, 8) and item["z_f"].shape == (4, 8, 8)
    assert item["prompt_embeds"].shape == (16, 32) and item["z_s"].dtype == torch.float32
    tensors, metas = load_shards(out)
    assert tensors["z_s"].shape == (5, 4, 8, 8) and set(tensors) == {"z_s", "z_f", "prompt_embeds"}
    torch.testing.assert_close(tensors["z_f"][4], item["z_f"])
    meta = metas[1]
    assert meta["format"] == FORMAT and meta["count"] == 2
    assert SplicePlan.from_dict(meta["plan"]) == SplicePlan()
    assert meta["timesteps"]["splice"] == 201 and meta["timesteps"]["target"] == -1
    assert meta["timesteps"]["teacher"] == list(range(976, 225, -25)) + list(range(201, 0, -20))
    assert meta["prompts"] == PROMPTS[2:4] and meta["seeds"] == [12, 13]
    assert meta["model"]["pipeline"] == "StableDiffusionPipeline"
    assert meta["model"]["scheduler"]["steps_offset"] == 1
    with pytest.raises(IndexError):
        data[5]


def test_z_s_is_what_the_crf_meets_in_generate(sd_pipe, shards, tiny):
    out, _ = shards
    data = DistillationShards(out)
    crf = tiny.make_crf()
    generate(
        sd_pipe, crf, prompt=PROMPTS[3], guidance_scale=5.0, generator=torch.Generator().manual_seed(13),
        output_type="latent",
    )
    (z_in, c_in), = crf.calls
    torch.testing.assert_close(data[3]["z_s"], z_in[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(data[3]["prompt_embeds"], c_in[0], rtol=1e-5, atol=1e-5)


def test_full_teacher_z_f_is_the_plain_50_step_result(sd_pipe, tmp_path):
    generate_distillation_data(
        sd_pipe, PROMPTS[:1], tmp_path, teacher="full", seed=3, guidance_scale=5.0, progress=False
    )
    data = DistillationShards(tmp_path)
    plain = sd_pipe(
        prompt=PROMPTS[0], num_inference_steps=50, guidance_scale=5.0, generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).images
    torch.testing.assert_close(data[0]["z_f"], plain[0], rtol=1e-4, atol=1e-4)
    assert data.metadata[0]["timesteps"]["teacher"] == list(range(981, 0, -20))


def test_post_target_and_resume(sd_pipe, tmp_path, tiny):
    plan = SplicePlan(crf_output="post")
    kw = dict(plan=plan, batch_size=2, shard_size=2, seed=0, guidance_scale=5.0, progress=False)
    paths = generate_distillation_data(sd_pipe, PROMPTS[:4], tmp_path, **kw)
    first = [read_shard(p)[0] for p in paths]
    assert read_shard(paths[0])[1]["timesteps"]["target"] == 21
    paths[1].unlink()
    with tiny.UNetCallRecorder(sd_pipe.unet) as rec:
        again = generate_distillation_data(sd_pipe, PROMPTS[:4], tmp_path, **kw)
    assert again == paths
    assert len(rec.timesteps) == 31 + 11  # only the missing shard (one batch of 2) was generated
    for p, ref in zip(again, first):
        got = read_shard(p)[0]
        for key in ref:
            torch.testing.assert_close(got[key], ref[key])
    # z_f ("post") is the teacher's latent at t = 21: one more DDIM step from it is what the
    # teacher does next, so it differs from the clean end
    assert not torch.allclose(first[0]["z_f"], first[0]["z_s"])


def test_each_rank_writes_its_own_shards(sd_pipe, tmp_path, monkeypatch):
    kw = dict(shard_size=8, seed=0, guidance_scale=5.0, progress=False)
    p0 = generate_distillation_data(sd_pipe, PROMPTS[:3], tmp_path, rank=0, world_size=2, **kw)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    p1 = generate_distillation_data(sd_pipe, PROMPTS[:3], tmp_path, **kw)
    assert [p.name for p in p0] == ["rank000-of-002-00000.safetensors"]
    assert [p.name for p in p1] == ["rank001-of-002-00000.safetensors"]
    m0, m1 = read_shard(p0[0])[1], read_shard(p1[0])[1]
    assert m0["prompt_indices"] == [0, 2] and m1["prompt_indices"] == [1]
    assert len(DistillationShards(tmp_path)) == 3


def test_sdxl_shards_carry_pooled_embeddings(sdxl_pipe, tmp_path):
    sched = sdxl_pipe.scheduler
    sdxl_pipe.scheduler = DDIMScheduler.from_config(sched.config, clip_sample=False)
    try:
        generate_distillation_data(sdxl_pipe, PROMPTS[:1], tmp_path, guidance_scale=5.0, progress=False)
    finally:
        sdxl_pipe.scheduler = sched
    item = DistillationShards(tmp_path)[0]
    assert item["prompt_embeds"].shape == (16, 64) and item["pooled_prompt_embeds"].shape == (32,)


def test_refusals(sd_pipe, tmp_path):
    with pytest.raises(TypeError, match="prompts must be a sequence of strings"):
        generate_distillation_data(sd_pipe, "a cat", tmp_path)
    with pytest.raises(ValueError, match="sets .*num_inference_steps"):
        generate_distillation_data(sd_pipe, PROMPTS, tmp_path, num_inference_steps=50)
    with pytest.raises(ValueError, match="rank < world_size"):
        generate_distillation_data(sd_pipe, PROMPTS, tmp_path, rank=2, world_size=2)
    sched = sd_pipe.scheduler
    sd_pipe.scheduler = EulerDiscreteScheduler.from_config(sched.config)
    try:
        with pytest.raises(ValueError, match="DDIM teacher"):
            generate_distillation_data(sd_pipe, PROMPTS, tmp_path)
    finally:
        sd_pipe.scheduler = sched
    with pytest.raises(ValueError, match="missing 'z_f'"):
        write_shard(tmp_path / "x.safetensors", {"z_s": torch.zeros(1, 4, 2, 2), "prompt_embeds": torch.zeros(1, 3, 5)}, {})
    bad = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"z_s": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="not an energycrf distillation shard"):
        read_shard(bad)
    with safe_open(str(bad), framework="pt") as f:
        assert f.metadata() is None or "energycrf" not in f.metadata()


def test_written_metadata_is_json(tmp_path):
    p = write_shard(
        tmp_path / "s.safetensors",
        {"z_s": torch.ones(2, 4, 3, 3), "z_f": torch.zeros(2, 4, 3, 3), "prompt_embeds": torch.ones(2, 5, 7)},
        {"plan": SplicePlan().to_dict()},
    )
    with safe_open(str(p), framework="pt") as f:
        meta = json.loads(f.metadata()["energycrf"])
    assert meta["count"] == 2 and meta["format"] == FORMAT
    assert not (tmp_path / "s.safetensors.tmp").exists()


def test_cli_writes_shards_from_a_saved_pipeline(sd_pipe, tmp_path, capsys):
    import argparse

    from energycrf.apps import distill_data as cli

    sd_pipe.save_pretrained(str(tmp_path / "pipe"))
    (tmp_path / "prompts.txt").write_text("a red cube\n\nthe sea\n")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([
        "--pipeline", str(tmp_path / "pipe"), "--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "out"),
        "--pre-run", "35", "--post-run", "1", "--guidance-scale", "5", "--no-progress", "--ddim",
    ])
    assert cli.run(args) == 0
    data = DistillationShards(tmp_path / "out")
    assert len(data) == 2 and data.metadata[0]["prompts"] == ["a red cube", "the sea"]
    assert SplicePlan.from_dict(data.metadata[0]["plan"]) == SplicePlan(pre_run=35, post_run=1)
    assert "1 shard(s)" in capsys.readouterr().out


def test_stage2_trainer_dataset_reads_the_shards(shards):
    from energycrf.training.data import LatentShards

    out, _ = shards
    data = LatentShards(out)
    ours = DistillationShards(out)
    assert len(data) == len(ours) == 5 and data.optional_keys == ("prompt_embeds",)
    for i in (0, 3, 4):
        for key in ("z_s", "z_f", "prompt_embeds"):
            torch.testing.assert_close(data[i][key], ours[i][key])


def _distill_args(tmp_path, *extra):
    import argparse

    from energycrf.apps import distill_data as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args([
        "--pipeline", str(tmp_path / "pipe"), "--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "out"),
        "--post-run", "1", "--guidance-scale", "5", "--no-progress", "--ddim", "--batch-size", "2", *extra,
    ])


def test_cli_resume_with_other_settings_is_refused_and_overwrite_removes_stale_shards(sd_pipe, tmp_path):
    from energycrf.apps import distill_data as cli
    from energycrf.apps._command import UsageError

    sd_pipe.save_pretrained(str(tmp_path / "pipe"))
    (tmp_path / "prompts.txt").write_text("a red cube\nthe sea\n")
    assert cli.run(_distill_args(tmp_path, "--shard-size", "1")) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert len(before) == 2
    for extra, option in ((["--pre-run", "34"], "--pre-steps/--pre-run"), (["--shard-size", "2"], "--shard-size"),
                          (["--seed", "3"], "--seed"), (["--teacher", "full"], "--teacher"),
                          (["--guidance-scale", "6"], "--guidance-scale")):
        with pytest.raises(UsageError, match="^--resume: expected the settings of the shards in --out, got other "
                           + option):
            cli.run(_distill_args(tmp_path, "--shard-size", "1", "--resume", *extra))
        assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # nothing rewritten
    assert cli.run(_distill_args(tmp_path, "--shard-size", "1", "--resume")) == 0  # the same settings: kept
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    (tmp_path / "out" / "notes.safetensors").write_bytes(b"not a shard")  # not of the command's naming: kept
    assert cli.run(_distill_args(tmp_path, "--shard-size", "2", "--overwrite")) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.safetensors",
                                                                   "rank000-of-001-00000.safetensors"]
    data = DistillationShards([tmp_path / "out" / "rank000-of-001-00000.safetensors"])
    assert len(data) == 2 and data.metadata[0]["prompts"] == ["a red cube", "the sea"]
