import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from energycrf.learned.losses import LatentDiscriminator
from energycrf.training import ImagePatches, LatentShards, TrainConfig, Trainer, read_log

from ._toy import ToyDenoiser, forward_signalling_at, toy_images


def _cfg(tmp, **kw):
    base = dict(output_dir=str(tmp), max_steps=8, batch_size=4, lr=3e-3, warmup_steps=2,
                noise_mode="sigma", noise_level=(0.05, 0.2), log_every=1, progress=False, seed=11)
    base.update(kw)
    return TrainConfig(**base)


def _run(tmp, adversarial, stops, seed_model=0):
    """Train in pieces: ``stops`` = steps per fresh Trainer (each one resumes)."""
    ds = ImagePatches(toy_images(3, 32), patch_size=12, length=40, seed=2)  # 10 batches / epoch
    for k, n in enumerate(stops):
        torch.manual_seed(seed_model + 100 * k)  # a fresh, differently initialised object each time
        model = ToyDenoiser()
        disc = LatentDiscriminator(in_channels=1, channels=(4, 4, 8)) if adversarial else None
        tr = Trainer(model, _cfg(tmp, adversarial=adversarial, max_steps=sum(stops)), ds, discriminator=disc)
        out = tr.fit(stop_after=n)
    return tr, out


@pytest.mark.parametrize("adversarial", [False, True])
def test_killed_and_resumed_run_is_bit_identical(tmp_path, adversarial):
    """Stop after 3 and 8 steps (crossing an epoch boundary at 10), resume with new objects."""
    torch.manual_seed(0)
    whole, _ = _run(tmp_path / "whole", adversarial, [13])
    torch.manual_seed(0)
    pieces, out = _run(tmp_path / "pieces", adversarial, [3, 5, 5])
    assert out["step"] == 13
    for a, b in zip(whole.model.state_dict().values(), pieces.model.state_dict().values()):
        assert torch.equal(a, b)
    if adversarial:
        for a, b in zip(whole.discriminator.state_dict().values(), pieces.discriminator.state_dict().values()):
            assert torch.equal(a, b)
    la, lb = read_log(tmp_path / "whole" / "log.jsonl"), read_log(tmp_path / "pieces" / "log.jsonl")
    assert [r["step"] for r in lb] == list(range(1, 14))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert (tmp_path / "pieces" / "loss_curve.png").stat().st_size > 1000
    # the final weights on disk are the model's, and only safetensors/json files were written
    ck = tmp_path / "pieces" / (tmp_path / "pieces" / "latest").read_text().strip()
    sd = load_file(str(ck / "model.safetensors"))
    assert all(torch.equal(sd[k], v) for k, v in pieces.model.state_dict().items())
    assert {p.suffix for p in ck.iterdir()} == {".safetensors", ".json"}
    # without restoring the RNG state (dropout) the result would differ: a control
    torch.manual_seed(0)
    _run(tmp_path / "ctrl", adversarial, [3])
    ctrl_ck = tmp_path / "ctrl" / (tmp_path / "ctrl" / "latest").read_text().strip()
    st = load_file(str(ctrl_ck / "state.safetensors"))
    st["rng.torch"] = torch.manual_seed(12345).get_state()
    save_file(st, str(ctrl_ck / "state.safetensors"))
    meta = json.loads((ctrl_ck / "state.json").read_text())
    del meta["integrity"]  # else the checksum refuses the edited file: load it as a checkpoint without one
    (ctrl_ck / "state.json").write_text(json.dumps(meta))
    ctrl, _ = _run(tmp_path / "ctrl", adversarial, [10], seed_model=0)
    assert any(not torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(),
                                                    ctrl.model.state_dict().values()))


def test_learning_rate_follows_warmup_cosine(tmp_path):
    tr, _ = _run(tmp_path, False, [8])
    lrs = [r["lr"] for r in read_log(tmp_path / "log.jsonl")]
    # the rate used by step t (0-based): warm-up over 2 steps, then cosine over the 6 others
    import math
    ref = [3e-3 * (t + 1) / 2 if t < 2 else 3e-3 * 0.5 * (1 + math.cos(math.pi * (t - 2) / 6)) for t in range(8)]
    assert lrs == pytest.approx(ref)


def test_stage2_reads_pairs_and_learns_the_map(tmp_path):
    torch.manual_seed(0)
    z_f = torch.randn(64, 1, 8, 8)
    for k in range(2):  # the diffusers helper's shard layout
        save_file({"z_s": z_f[32 * k:32 * (k + 1)] * 0.5, "z_f": z_f[32 * k:32 * (k + 1)]},
                  str(tmp_path / f"pairs-{k}.safetensors"))

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.s = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.s * x

    model = Scale()
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), stage=2, max_steps=150, batch_size=8, lr=0.05,
                      warmup_steps=5, log_every=10, progress=False)
    assert TrainConfig(stage=2).base_lr == 1e-5 and TrainConfig().base_lr == 1e-3
    Trainer(model, cfg, LatentShards(tmp_path)).fit()
    assert model.s.item() == pytest.approx(2.0, abs=0.05)


def test_config_and_trainer_validate(tmp_path):
    with pytest.raises(ValueError, match="stage"):
        TrainConfig(stage=3)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="noise_mode|mode"):
        TrainConfig(noise_mode="x")
    ds = ImagePatches(toy_images(1, 32), patch_size=12, length=8)
    with pytest.raises(ValueError, match="discriminator"):
        Trainer(ToyDenoiser(), _cfg(tmp_path, adversarial=True), ds)
    with pytest.raises(TypeError, match="model"):
        Trainer("nope", _cfg(tmp_path), ds)
    with pytest.raises(ValueError, match="global batch"):
        Trainer(ToyDenoiser(), _cfg(tmp_path, batch_size=16), ds)


def test_divergence_is_reported_not_silent(tmp_path):
    class Bad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.w * float("nan")

    ds = ImagePatches(toy_images(1, 32), patch_size=12, length=8)
    with pytest.raises(FloatingPointError, match="diverged"):
        Trainer(Bad(), _cfg(tmp_path), ds).fit()


def test_loss_margin_ignores_the_border(tmp_path):
    """With a margin, a model that is wrong only on the border has zero loss and gets no gradient."""

    class BorderOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, x):
            mask = torch.ones_like(x)
            mask[..., 2:-2, 2:-2] = 0
            return self.b * mask  # interior: 0 = the target below

    ds = ImagePatches([np.zeros((20, 20), np.float32)], patch_size=12, length=8)
    model = BorderOnly()
    cfg = _cfg(tmp_path, noise_mode="sigma", noise_level=0.0, loss_margin=2, max_steps=2, warmup_steps=0,
               weight_decay=0.0)
    tr = Trainer(model, cfg, ds)
    tr.fit()
    assert read_log(tmp_path / "log.jsonl")[0]["loss"] == 0.0
    assert model.b.item() == 0.5
    with pytest.raises(ValueError, match="loss_margin"):
        Trainer(BorderOnly(), _cfg(tmp_path / "b", loss_margin=6, noise_level=0.0), ds).fit()


def test_stage1_on_latent_shards_feeds_the_papers_noised_latents(tmp_path):
    """Stage 1 from clean latents on disk: the model sees z~ = sqrt(a) z + sqrt(1-a) n (3.4.1)."""
    from energycrf.learned.losses import add_noise
    from energycrf.training import NoiseSpec

    torch.manual_seed(0)
    z = torch.randn(12, 4, 6, 6)
    save_file({"z": z}, str(tmp_path / "latents.safetensors"))
    seen = []

    class Record(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.w * x

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=4, batch_size=3, noise_mode="alpha",
                      noise_level=(0.2, 0.8), progress=False, seed=3)
    tr = Trainer(Record(), cfg, LatentShards(tmp_path, keys=("z",)))
    tr.fit()
    assert len(seen) == 4
    sampler_order = torch.randperm(12, generator=torch.Generator().manual_seed(3)).tolist()
    spec = NoiseSpec("alpha", (0.2, 0.8))
    for step, x in enumerate(seen):
        idx = torch.tensor(sampler_order[3 * step:3 * step + 3])
        n, a = spec.draw((4, 6, 6), idx, seed=3, epoch=0)
        assert bool(((a >= 0.2) & (a <= 0.8)).all())
        torch.testing.assert_close(x, add_noise(z[idx], a, noise=n))


def test_init_from_takes_the_weights_of_a_run_a_checkpoint_or_a_weights_file(tmp_path):
    """Stage 2 starts from stage 1: ``init_from`` accepts the stage-1 run folder (the checkpoint
    ``latest`` names, not an older one), one checkpoint, or a weights file; an empty folder is
    refused by name."""
    ds = ImagePatches(toy_images(2, 24), patch_size=8, length=16, seed=1)
    torch.manual_seed(0)
    stage1 = Trainer(ToyDenoiser(), _cfg(tmp_path / "s1", max_steps=4, checkpoint_every=2, keep_checkpoints=0), ds)
    stage1.fit()
    assert (tmp_path / "s1" / "latest").read_text().strip() == "step-0000004"
    final = {k: v.clone() for k, v in stage1.model.state_dict().items()}
    older = load_file(str(tmp_path / "s1" / "step-0000002" / "model.safetensors"))
    assert any(not torch.equal(final[k], older[k]) for k in final)  # the two checkpoints differ
    save_file(final, str(tmp_path / "weights.safetensors"))
    for source, expected in ((tmp_path / "s1", final), (tmp_path / "s1" / "step-0000002", older),
                             (tmp_path / "weights.safetensors", final)):
        torch.manual_seed(1)
        stage2 = Trainer(ToyDenoiser(), _cfg(tmp_path / "s2"), ds)
        stage2.init_from(source)
        got = stage2.model.state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected), source
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="path: no checkpoint or .safetensors weights at .*empty"):
        stage2.init_from(tmp_path / "empty")


@pytest.mark.parametrize("signal_at, steps, stopped", [(None, 3, False), (3, 3, True), (2, 2, True)])
def test_fit_says_when_a_stop_was_requested_also_during_its_last_step(tmp_path, signal_at, steps, stopped):
    """SIGTERM during step 2 of 3 ends fit after it; during step 3 of 3 the call ends as planned
    but must still say so (a loop of ``fit(stop_after=n)`` calls would otherwise go on)."""
    forward = forward_signalling_at(signal_at)
    ds = ImagePatches(toy_images(3, 32), patch_size=12, length=40, seed=2)
    torch.manual_seed(0)
    out = Trainer(ToyDenoiser(), _cfg(tmp_path), ds, forward_fn=forward).fit(stop_after=3)
    assert (out["step"], out["stopped"]) == (steps, stopped)
    assert out["checkpoint"] is not None and out["checkpoint"].name == f"step-{steps:07d}"
