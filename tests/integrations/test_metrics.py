"""Paired measures and bootstrap intervals against their formulas and reference implementations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from energycrf.integrations import metrics as M


def _frechet_scipy(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_latent_mse_and_psnr_by_hand():
    z = np.zeros((3, 4, 2, 2))
    zt = z.copy()
    zt[1] += 0.5
    zt[2, 0] += 2.0  # one channel of four off by 2: mean 4 / 4 = 1
    np.testing.assert_allclose(M.latent_mse(z, zt), [0.0, 0.25, 1.0])
    x = np.full((2, 1, 4, 4), 0.5)
    xt = x.copy()
    xt[0] += 0.1  # mse 0.01 -> 20 dB at range 1
    xt[1, 0, 0, 0] += 0.8  # mse 0.64 / 16 = 0.04 -> 10 log10(25) at range 1
    np.testing.assert_allclose(M.psnr(x, xt), [20.0, 10 * np.log10(25.0)])
    np.testing.assert_allclose(M.psnr(x * 255, xt * 255, data_range=255.0), [20.0, 10 * np.log10(25.0)])
    assert M.psnr(x, x)[0] == np.inf
    # torch tensors are accepted as they are
    np.testing.assert_allclose(M.latent_mse(torch.zeros(2, 3), torch.ones(2, 3)), [1.0, 1.0])
    with pytest.raises(ValueError, match="same non-empty shape"):
        M.latent_mse(z, z[:2])
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(x, xt, data_range=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_matches_a_direct_sqrtm(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(80, 5)) * 1.5 + 0.3
    assert M.frechet_distance(a, b) == pytest.approx(_frechet_scipy(a, b), rel=1e-6)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="same d"):
        M.frechet_distance(a, b[:, :3])


def test_vendi_matches_the_vendi_package():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from vendi_score import vendi
    x = np.random.default_rng(0).normal(size=(12, 7))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = float(vendi.score_K(xn @ xn.T))
    assert M.vendi_score(x) == pytest.approx(ref, rel=1e-8)
    assert M.vendi_score(np.eye(5)) == pytest.approx(5.0)


def _coverage(level: float, trials: int = 300, n: int = 40) -> float:
    rng = np.random.default_rng(123)
    hit = 0
    for k in range(trials):
        x = rng.normal(1.5, 2.0, size=n)
        e = M.bootstrap_mean(x, n_boot=400, level=level, seed=k)
        hit += e.low <= 1.5 <= e.high
    return hit / trials


def test_bootstrap_mean_interval_covers_the_true_mean():
    # percentile bootstrap of a normal mean: close to nominal (slightly under at n = 40)
    cov = _coverage(0.95)
    assert 0.89 <= cov <= 0.99, cov
    # the check can fail: a 50% interval covers about half the time
    assert 0.35 <= _coverage(0.5) <= 0.65


def test_bootstrap_mean_and_generic_bootstrap_agree():
    x = np.random.default_rng(1).normal(size=50)
    a = M.bootstrap_mean(x, n_boot=500, seed=3)
    b = M.bootstrap(lambda i: x[i].mean(), 50, n_boot=500, seed=3)
    assert a == b and a.value == pytest.approx(x.mean()) and a.n == 50
    assert a.low < a.value < a.high and a.excludes_zero == (not a.low <= 0 <= a.high)
    assert M.Estimate.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="n_boot"):
        M.bootstrap_mean(x, n_boot=5)
    with pytest.raises(ValueError, match="level"):
        M.bootstrap_mean(x, level=95)


def test_paired_difference_is_the_bootstrap_of_the_differences():
    rng = np.random.default_rng(2)
    b = rng.normal(size=200) * 5  # large spread between units ...
    a = b + 0.1 + rng.normal(size=200) * 0.05  # ... cancels in the paired difference
    d = M.paired_difference(a, b)
    assert d.value == pytest.approx(0.1, abs=0.01) and d.excludes_zero and d.high - d.low < 0.03
    # unpaired, the same shift would be lost in the spread
    ua, ub = M.bootstrap_mean(a), M.bootstrap_mean(b)
    assert ua.low < ub.high
    c = M.paired_difference(b + 2.0, b)
    assert c.low == pytest.approx(2.0) and c.high == pytest.approx(2.0)
    with pytest.raises(ValueError, match="paired"):
        M.paired_difference(a, b[:10])


def test_frechet_bootstrap_and_paired_difference():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(300, 3))
    f = rng.normal(size=(120, 3)) + 0.5
    e = M.bootstrap_frechet(f, ref, n_boot=200)
    assert e.value == pytest.approx(M.frechet_distance(f, ref)) and e.low < e.value < e.high and e.n == 120
    fixed = M.bootstrap_frechet(f, ref, n_boot=200, resample_reference=False)
    assert fixed.value == e.value and fixed.high - fixed.low < e.high - e.low
    # the same features on both sides: the paired difference is exactly 0 in every replicate
    z = M.paired_frechet_difference(f, f, ref, n_boot=50)
    assert z.value == 0 and z.low == 0 and z.high == 0
    # a shift of one set by 0.3 in every image: resolved, and equal to the difference of the FDs
    g = f + 0.3
    d = M.paired_frechet_difference(g, f, ref, n_boot=200)
    assert d.value == pytest.approx(M.frechet_distance(g, ref) - M.frechet_distance(f, ref))
    assert d.excludes_zero and d.value > 0
    with pytest.raises(ValueError, match="paired"):
        M.paired_frechet_difference(g[:50], f, ref)


def test_disjoint_seed_sets():
    assert M.disjoint_seed_sets(2, 16) == [list(range(16)), list(range(16, 32))]
    assert M.disjoint_seed_sets(1, 3, start=5) == [[5, 6, 7]]
    with pytest.raises(ValueError, match="count"):
        M.disjoint_seed_sets(0, 3)


def _paired_sets(seed, n=100, d=6):
    r = np.random.default_rng(seed)
    a = r.normal(size=(n, d)) * 1.1 + 0.05
    b = a * 0.97 + 0.05 * r.normal(size=(n, d))  # a paired method: slightly shrunk, a little noise
    return a, b


def test_frechet_jackknife_matches_the_sampling_spread_and_covers():
    ref = np.random.default_rng(0).normal(size=(400, 6))
    diffs = np.array([M.frechet_distance(a, ref) - M.frechet_distance(b, ref)
                      for a, b in (_paired_sets(100 + k) for k in range(200))])
    truth, sd = diffs.mean(), diffs.std()
    hits, widths = 0, []
    for k in range(60):
        a, b = _paired_sets(1000 + k)
        e = M.paired_frechet_jackknife(a, b, ref, reference_groups=0)
        hits += e.low <= truth <= e.high
        widths.append((e.high - e.low) / (2 * 1.959964))
    assert 0.8 * sd < np.mean(widths) < 1.25 * sd, (np.mean(widths), sd)
    assert hits >= 50, hits  # about 95% of 60
    # the bootstrap's resamples repeat images and inflate the distance: its interval sits above the value
    a, b = _paired_sets(7)
    boot = M.paired_frechet_difference(a, b, ref, n_boot=200, resample_reference=False)
    assert (boot.low + boot.high) / 2 > boot.value
    single = M.bootstrap_frechet(a, ref, n_boot=200, resample_reference=False)
    assert (single.low + single.high) / 2 > single.value


def test_frechet_jackknife_identities():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(300, 3))
    f = rng.normal(size=(120, 3)) + 0.5
    e = M.jackknife_frechet(f, ref)
    assert e.value == pytest.approx(M.frechet_distance(f, ref)) and e.low < e.value < e.high and e.n == 120
    fixed = M.jackknife_frechet(f, ref, reference_groups=0)
    assert fixed.value == e.value and fixed.high - fixed.low < e.high - e.low
    z = M.paired_frechet_jackknife(f, f, ref)
    assert z.value == 0 and z.low == 0 and z.high == 0
    d = M.paired_frechet_jackknife(f + 0.3, f, ref)
    assert d.excludes_zero and d.value == pytest.approx(M.frechet_distance(f + 0.3, ref) - M.frechet_distance(f, ref))
    with pytest.raises(ValueError, match="paired"):
        M.paired_frechet_jackknife(f[:50], f, ref)
    with pytest.raises(ValueError, match="at least 3"):
        M.jackknife_frechet(f[:2], ref)


def test_intervals_refuse_non_finite_values_with_the_reason():
    """An image identical to the teacher's has an infinite PSNR: the summaries say so instead of a NaN interval."""
    x = np.random.default_rng(0).random((4, 1, 4, 4))
    p = M.psnr(x, x.copy())
    assert np.isinf(p).all()
    with pytest.raises(ValueError, match="values must be finite, got 4 infinite or NaN values of 4.*teacher"):
        M.bootstrap_mean(p)
    with pytest.raises(ValueError, match="a must be finite, got 1 infinite or NaN value of 3"):
        M.paired_difference(np.array([1.0, np.nan, 2.0]), np.ones(3))
