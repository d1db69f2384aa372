import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from energycrf.learned.losses import add_noise
from energycrf.training.data import ImagePatches, LatentShards, NoiseSpec, ResumableDistributedSampler

from ._toy import toy_images


def test_image_patches_are_deterministic_and_inside_the_images():
    ims = toy_images(2, size=30)
    ds = ImagePatches(ims, patch_size=8, length=50, seed=4, augment=False)
    a, b = ds[7], ImagePatches(ims, patch_size=8, length=50, seed=4, augment=False)[7]
    assert torch.equal(a["z"], b["z"]) and a["z"].shape == (1, 8, 8)
    # the patch is a crop of one of the images
    found = False
    for im in ims:
        win = np.lib.stride_tricks.sliding_window_view(im, (8, 8))
        found |= bool(np.any(np.all(win == a["z"][0].numpy(), axis=(-1, -2))))
    assert found
    assert not torch.equal(ds[7]["z"], ImagePatches(ims, 8, 50, seed=5, augment=False)[7]["z"])


@pytest.mark.parametrize("bad,match", [(dict(patch_size=0), "patch_size"), (dict(patch_size=64), "smaller"),
                                       (dict(patch_size=4, length=0), "length")])
def test_image_patches_validate(bad, match):
    with pytest.raises(ValueError, match=match):
        ImagePatches(toy_images(1, 30), **bad)


def test_latent_shards_read_every_shard_in_order(tmp_path):
    torch.manual_seed(0)
    parts = [(3, 4), (5, 4)]
    rows = []
    for k, (n, c) in enumerate(parts):
        t = {"z_s": torch.randn(n, c, 2, 2), "z_f": torch.randn(n, c, 2, 2), "prompt_embeds": torch.randn(n, 6, 8)}
        save_file(t, str(tmp_path / f"shard-{k:03d}.safetensors"))
        rows += [{key: v[i] for key, v in t.items()} for i in range(n)]
    ds = LatentShards(tmp_path)
    assert len(ds) == 8 and ds.optional_keys == ("prompt_embeds",)
    for i in (0, 2, 3, 7):
        item = ds[i]
        for key in ("z_s", "z_f", "prompt_embeds"):
            assert torch.equal(item[key], rows[i][key])
    with pytest.raises(IndexError):
        ds[8]


def test_latent_shards_validate(tmp_path):
    with pytest.raises(ValueError, match="no .safetensors"):
        LatentShards(tmp_path)
    save_file({"z_s": torch.zeros(2, 1)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match="lacks keys"):
        LatentShards(tmp_path)


@given(n=st.integers(6, 40), per_rank=st.integers(1, 3), world=st.integers(1, 3), start=st.integers(0, 3),
       epoch=st.integers(0, 3))
def test_rank_batches_partition_the_single_process_global_batch(n, per_rank, world, start, epoch):
    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return n

    gb = per_rank * world
    if n < gb:
        return
    single = ResumableDistributedSampler(DS(), batch_size=gb, num_replicas=1, rank=0, seed=3)
    single.set_epoch(epoch)
    full = list(single)
    start = min(start, single.batches_per_epoch - 1)
    ranks = []
    for r in range(world):
        s = ResumableDistributedSampler(DS(), batch_size=per_rank, num_replicas=world, rank=r, seed=3)
        s.set_epoch(epoch)
        s.start_batch = start
        ranks.append(list(s))
        assert len(ranks[-1]) == len(s)
    for b in range(single.batches_per_epoch - start):
        union = sorted(i for r in range(world) for i in ranks[r][b * per_rank:(b + 1) * per_rank])
        assert union == sorted(full[(start + b) * gb:(start + b + 1) * gb])


def test_noise_alpha_mode_is_the_papers_noising_and_is_per_sample_deterministic():
    spec = NoiseSpec("alpha", (0.3, 0.9))
    z = torch.randn(4, 2, 3, 3)
    idx = torch.tensor([5, 1, 9, 5])
    n, a = spec.draw(z.shape[1:], idx, seed=1, epoch=2)
    assert torch.equal(n[0], n[3]) and a[0] == a[3] and not torch.equal(n[0], n[1])
    assert bool(((a >= 0.3) & (a <= 0.9)).all())
    out = spec.apply(z, n, a)
    ref = a.sqrt().view(-1, 1, 1, 1) * z + (1 - a).sqrt().view(-1, 1, 1, 1) * n
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out, add_noise(z, a, noise=n))
    n2, _ = spec.draw(z.shape[1:], idx, seed=1, epoch=3)
    assert not torch.equal(n, n2)


def test_noise_sigma_mode_adds_white_noise_of_that_level():
    spec = NoiseSpec("sigma", 25 / 255)
    z = torch.zeros(2, 1, 64, 64)
    n, s = spec.draw(z.shape[1:], torch.tensor([0, 1]), seed=0, epoch=0)
    out = spec.apply(z, n, s)
    assert math.isclose(out.std().item(), 25 / 255, rel_tol=0.05)


@pytest.mark.parametrize("mode,level,match", [("beta", 0.5, "mode"), ("alpha", 0.0, "alpha"),
                                              ("alpha", (0.5, 0.2), "low <= high"), ("sigma", -1.0, "sigma")])
def test_noise_spec_validates(mode, level, match):
    with pytest.raises(ValueError, match=match):
        NoiseSpec(mode, level)
