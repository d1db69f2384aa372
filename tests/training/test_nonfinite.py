"""Non-finite inputs, losses and gradients in training never reach the weights, the optimiser
or the normalisation statistics: ``on_nonfinite="stop"`` raises naming the step and the batch
and leaves the model as it was before that batch; ``"skip"`` skips the batch and counts it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import energycrf as ec
from energycrf.training import ImagePatches, ResumableDistributedSampler, TrainConfig, Trainer, read_log

from ._toy import toy_images

BATCH = 4
SEED = 11


def _cfg(tmp, **kw):
    # amp=False: on a GPU, float16 autocast's GradScaler would skip NaN-gradient steps itself
    base = dict(output_dir=str(tmp), max_steps=8, batch_size=BATCH, lr=3e-3, warmup_steps=2,
                noise_mode="sigma", noise_level=(0.05, 0.2), log_every=1, progress=False, seed=SEED, amp=False)
    base.update(kw)
    return TrainConfig(**base)


def _data():
    return ImagePatches(toy_images(3, 32), patch_size=12, length=40, seed=2)  # 10 batches / epoch


class BNToy(nn.Module):
    """A residual CNN with batch norm (running statistics) and dropout (the global RNG)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.drop = nn.Dropout2d(0.1)
        self.conv2 = nn.Conv2d(6, 1, 3, padding=1)

    def forward(self, x, c=None):
        return x - self.conv2(self.drop(torch.relu(self.norm(self.conv1(x)))))


class Poisoned(Dataset):
    """``base`` with one NaN pixel in sample ``bad``."""

    def __init__(self, base, bad: int):
        self.base, self.bad = base, bad

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = dict(self.base[i])
        if i == self.bad:
            item["z"] = item["z"].clone()
            item["z"][0, 3, 5] = float("nan")
        return item


def _sample_in_batch(ds, k: int) -> int:
    """A sample index that epoch 0 puts into global batch ``k``."""
    sampler = ResumableDistributedSampler(ds, batch_size=BATCH, seed=SEED)
    sampler.set_epoch(0)
    return list(sampler)[k * BATCH + 1]


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _crf():
    torch.manual_seed(0)
    return ec.LatentCRF(channels=1, num_iterations=2, num_filters=2, hidden_channels=4, attention_dim=4,
                        normalization="batch")


def test_nan_pixel_stops_before_touching_weights_or_statistics(tmp_path):
    ds = _data()
    k = 3  # the batch of step 4
    crf = _crf()
    tr = Trainer(crf, _cfg(tmp_path), Poisoned(ds, _sample_in_batch(ds, k)))
    tr.fit(stop_after=k)
    before, opt_before = _state(crf), copy.deepcopy(tr.optimizer.state_dict())
    rng_before = torch.get_rng_state()
    with pytest.raises(FloatingPointError, match=r"step 4 \(epoch 0, batch 3 of the epoch\).*'x'.*1 of 576"):
        tr.fit()
    assert tr.step == k
    assert _equal(_state(crf), before)  # parameters and running statistics, bit for bit
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert str(tr.optimizer.state_dict()) == str(opt_before)
    crf.eval()
    assert torch.isfinite(crf(torch.rand(2, 1, 12, 12, device=tr.device))).all()
    crf.save_pretrained(tmp_path / "pretrained")  # finite: saving does not refuse it


def _without_batch(k):
    class Without(Trainer):
        """The same run on the data without global batch ``k`` (the stream skips it)."""

        def _batches(self):
            for n, item in enumerate(super()._batches()):
                if n != k:
                    yield item

    return Without


def test_skip_mode_skips_and_counts_the_batch_and_equals_a_run_without_it(tmp_path):
    ds = _data()
    k = 3
    torch.manual_seed(0)
    skip = Trainer(BNToy(), _cfg(tmp_path / "skip", on_nonfinite="skip"), Poisoned(ds, _sample_in_batch(ds, k)))
    out = skip.fit()
    assert out["step"] == 8 and skip.skipped == 1
    log = read_log(tmp_path / "skip" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 9))
    assert [r["skipped"] for r in log] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert "loss" not in log[k] and log[k]["nonfinite"] == "input 'x'"
    assert all(torch.isfinite(v).all() for v in skip.model.state_dict().values() if v.is_floating_point())

    torch.manual_seed(0)
    ref = _without_batch(k)(BNToy(), _cfg(tmp_path / "ref"), ds)
    ref.fit(stop_after=7)
    assert _equal(_state(skip.model), _state(ref.model))  # weights and running statistics
    assert [r["loss"] for r in log if "loss" in r] == [r["loss"] for r in read_log(tmp_path / "ref" / "log.jsonl")]


def test_skipped_count_survives_a_resume(tmp_path):
    ds = _data()
    bad = Poisoned(ds, _sample_in_batch(ds, 1))
    torch.manual_seed(0)
    whole = Trainer(BNToy(), _cfg(tmp_path / "whole", on_nonfinite="skip"), bad)
    whole.fit()
    for n in (3, 5):
        torch.manual_seed(0)
        pieces = Trainer(BNToy(), _cfg(tmp_path / "pieces", on_nonfinite="skip"), bad)
        pieces.fit(stop_after=n)
    assert pieces.skipped == whole.skipped == 1
    assert _equal(_state(whole.model), _state(pieces.model))
    assert read_log(tmp_path / "pieces" / "log.jsonl") [-1]["skipped"] == 1


class NaNAt(nn.Module):
    """BNToy whose output turns NaN in its ``bad``-th training forward pass (finite input)."""

    def __init__(self, bad):
        super().__init__()
        self.inner, self.bad, self.calls = BNToy(), bad, 0

    def forward(self, x, c=None):
        y = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == self.bad:
                y = y * float("nan")
        return y


def test_nonfinite_loss_restores_the_running_statistics(tmp_path):
    torch.manual_seed(0)
    model = NaNAt(bad=3)
    tr = Trainer(model, _cfg(tmp_path / "stop"), _data())
    tr.fit(stop_after=2)
    before = _state(model)
    with pytest.raises(FloatingPointError, match=r"diverged.*step 3 \(epoch 0, batch 2 of the epoch\)"):
        tr.fit()
    assert _equal(_state(model), before)

    torch.manual_seed(0)
    tr = Trainer(NaNAt(bad=3), _cfg(tmp_path / "skip", on_nonfinite="skip"), _data())
    tr.fit()
    assert tr.skipped == 1
    assert read_log(tmp_path / "skip" / "log.jsonl")[2]["nonfinite"] == "loss"


def test_nonfinite_gradient_never_reaches_the_optimizer(tmp_path):
    calls = [0]

    def loss_fn(pred, target):  # finite (zero) loss, NaN gradient on its third call
        calls[0] += 1
        if calls[0] == 3:
            return torch.sqrt(((pred - target) ** 2).sum() * 0.0)
        return ((pred - target) ** 2).mean()

    torch.manual_seed(0)
    tr = Trainer(BNToy(), _cfg(tmp_path, grad_clip=None), _data(), loss_fn=loss_fn)
    tr.fit(stop_after=2)
    before, opt_before = _state(tr.model), copy.deepcopy(tr.optimizer.state_dict())
    with pytest.raises(FloatingPointError, match=r"diverged at step 3 .*gradient"):
        tr.fit()
    assert _equal({k: v for k, v in _state(tr.model).items() if "running" not in k and "num_batches" not in k},
                  {k: v for k, v in before.items() if "running" not in k and "num_batches" not in k})
    assert _equal(_state(tr.model), before)
    assert str(tr.optimizer.state_dict()) == str(opt_before)


def test_on_nonfinite_is_validated():
    for bad in ("ignore", None, 1):
        with pytest.raises(ValueError, match="on_nonfinite"):
            TrainConfig(on_nonfinite=bad)
    assert TrainConfig().on_nonfinite == "stop"
