"""The training objectives against their formulas (paper eqs. 12-14, 3.4-3.5, appendix D)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from energycrf.learned import losses as L

floats = st.floats(min_value=-60.0, max_value=60.0, allow_nan=False, width=64)


@given(
    logits=st.lists(floats, min_size=1, max_size=24),
    targets=st.lists(st.sampled_from([0.0, 1.0, 0.25, 0.5]), min_size=24, max_size=24),
)
def test_sce_equals_formula_and_bce_with_logits(logits, targets):
    a = torch.tensor(logits, dtype=torch.float64)
    t = torch.tensor(targets[: len(logits)], dtype=torch.float64)
    got = L.sigmoid_cross_entropy(a, t, reduction="none")
    # eq. 12 written out element by element in plain python
    explicit = torch.tensor(
        [max(ai, 0.0) - ai * ti + math.log1p(math.exp(-abs(ai))) for ai, ti in zip(a.tolist(), t.tolist())],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, explicit, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, F.binary_cross_entropy_with_logits(a, t, reduction="none"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(L.sigmoid_cross_entropy(a, t), explicit.mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(L.sigmoid_cross_entropy(a, t, reduction="sum"), explicit.sum(), rtol=1e-12, atol=1e-12)


def test_sce_scalar_target_and_large_logits_are_finite():
    a = torch.tensor([-1e4, -3.0, 0.0, 3.0, 1e4], dtype=torch.float32)
    for t in (0.0, 1.0):
        got = L.sigmoid_cross_entropy(a, t, reduction="none")
        assert torch.isfinite(got).all()
        ref = F.binary_cross_entropy_with_logits(a, torch.full_like(a, t), reduction="none")
        torch.testing.assert_close(got, ref)
    # log 2 at a = 0, whatever the target
    assert L.sigmoid_cross_entropy(torch.zeros(3), 1.0).item() == pytest.approx(math.log(2.0))


def test_sce_bad_input():
    with pytest.raises(ValueError, match="target"):
        L.sigmoid_cross_entropy(torch.zeros(3), 2.0)
    with pytest.raises(ValueError, match="target"):
        L.sigmoid_cross_entropy(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError, match="logits"):
        L.sigmoid_cross_entropy(torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="reduction"):
        L.sigmoid_cross_entropy(torch.zeros(3), 1.0, reduction="avg")


@given(
    b=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    alpha=st.floats(0.05, 1.0),
)
def test_add_noise_formula(b, seed, alpha):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, 4, 8, 8, generator=g, dtype=torch.float64)
    n = torch.randn(b, 4, 8, 8, generator=g, dtype=torch.float64)
    got = L.add_noise(z, alpha, n)
    torch.testing.assert_close(got, math.sqrt(alpha) * z + math.sqrt(1 - alpha) * n, rtol=1e-13, atol=1e-13)
    # one ratio per sample
    a = torch.rand(b, generator=g, dtype=torch.float64) * 0.9 + 0.05
    got = L.add_noise(z, a, n)
    for i in range(b):
        ref = a[i].sqrt() * z[i] + (1 - a[i]).sqrt() * n[i]
        torch.testing.assert_close(got[i], ref, rtol=1e-13, atol=1e-13)


def test_add_noise_draws_standard_normal_noise_reproducibly():
    z = torch.zeros(2, 4, 32, 32)
    a = L.add_noise(z, 0.75, generator=torch.Generator().manual_seed(3))
    b = L.add_noise(z, 0.75, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # z = 0: z~ = sqrt(1 - alpha) n, so z~ / 0.5 is N(0, 1)
    n = a / 0.5
    assert abs(n.mean().item()) < 0.05 and abs(n.std().item() - 1) < 0.05
    assert torch.equal(L.add_noise(z + 1, 1.0), z + 1)  # alpha = 1: no noise
    with pytest.raises(ValueError, match="alpha"):
        L.add_noise(z, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        L.add_noise(z, torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="noise"):
        L.add_noise(z, 0.5, torch.zeros(1, 4, 32, 32))


@given(b=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_denoising_and_distillation_losses_are_the_l2_norm(b, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, 4, 8, 8, generator=g, dtype=torch.float64)
    out = torch.randn(b, 4, 8, 8, generator=g, dtype=torch.float64)
    per = torch.stack([torch.sqrt(((z[i] - out[i]) ** 2).sum()) for i in range(b)])
    torch.testing.assert_close(L.denoising_loss(out, z, reduction="none"), per, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(L.denoising_loss(out, z), per.mean(), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(L.denoising_loss(out, z, reduction="sum"), per.sum(), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(L.distillation_loss(out, z), per.mean(), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(L.denoising_loss(out, z, norm="mse"), F.mse_loss(out, z), rtol=1e-13, atol=1e-13)


def test_denoising_loss_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        L.denoising_loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 7))
    with pytest.raises(ValueError, match="norm"):
        L.denoising_loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), norm="l1")
    with pytest.raises(TypeError, match="output"):
        L.denoising_loss([0.0], torch.zeros(1))


def test_discriminator_architecture_and_shapes():
    D = L.LatentDiscriminator(in_channels=4)
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 1]
    assert convs[-1].kernel_size == (1, 1)
    # the three feature convolutions are spectrally normalised, the 1x1 head is not
    for c in convs[:3]:
        assert torch.nn.utils.parametrize.is_parametrized(c, "weight")
        assert type(c.parametrizations.weight[0]).__name__ == "_SpectralNorm"
    assert not torch.nn.utils.parametrize.is_parametrized(convs[-1])
    kinds = [type(m) for m in D.features]
    assert len(kinds) == 9
    for i, cls in enumerate((torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.LeakyReLU) * 3):
        assert isinstance(D.features[i], cls)
    assert [m.num_features for m in D.features if isinstance(m, torch.nn.BatchNorm2d)] == [64, 64, 128]
    for shape in [(2, 4, 8, 8), (1, 4, 5, 7)]:
        out = D(torch.randn(*shape))
        assert out.shape == (shape[0], 1, shape[2], shape[3])
    with pytest.raises(ValueError, match="channels"):
        D(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="rank 4"):
        D(torch.randn(4, 8, 8))


def test_spectral_norm_bounds_the_conv_weight():
    torch.manual_seed(0)
    D = L.LatentDiscriminator(in_channels=2, channels=(8, 8, 16))
    D.train()
    x = torch.randn(4, 2, 8, 8)
    for _ in range(30):  # power iterations run in training-mode forwards
        D(x)
    for conv in [m for m in D.features if isinstance(m, torch.nn.Conv2d)]:
        w = conv.weight.detach().flatten(1)
        sigma = torch.linalg.matrix_norm(w, ord=2)
        assert sigma == pytest.approx(1.0, abs=1e-3)


def test_generator_and_discriminator_losses_match_eqs_13_14():
    torch.manual_seed(1)
    D = L.LatentDiscriminator(in_channels=4, channels=(8, 8, 16)).double()
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    zt = L.add_noise(z, 0.8)
    out = (0.5 * zt).requires_grad_()
    fake, real = D(out), D(z)
    nt = torch.linalg.vector_norm((z - out).flatten(1), dim=1).mean()
    bce = F.binary_cross_entropy_with_logits
    torch.testing.assert_close(L.generator_loss(out, z, fake), nt + bce(fake, torch.ones_like(fake)))
    torch.testing.assert_close(L.generator_loss(out, z, fake, adversarial_weight=0.1),
                               nt + 0.1 * bce(fake, torch.ones_like(fake)))
    torch.testing.assert_close(L.generator_loss(out, z), nt)
    torch.testing.assert_close(L.discriminator_loss(real, fake),
                               bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake)))
    with pytest.raises(ValueError, match="adversarial_weight"):
        L.generator_loss(out, z, fake, adversarial_weight=-1.0)


def test_adversarial_training_step_separates_real_and_fake():
    """A few discriminator steps on two distinguishable distributions lower L_disc.

    Real and fake latents go through D in one batch: batch norm on separate batches would
    remove the very mean shift that tells them apart.
    """
    torch.manual_seed(2)
    D = L.LatentDiscriminator(in_channels=1, channels=(8, 8, 8))
    opt = torch.optim.Adam(D.parameters(), lr=1e-2)
    real = torch.randn(8, 1, 8, 8) + 2.0
    fake = torch.randn(8, 1, 8, 8) - 2.0
    first = None
    for _ in range(20):
        logits = D(torch.cat([real, fake]))
        loss = L.discriminator_loss(logits[:8], logits[8:])
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
