"""Paired image-quality measures with bootstrap intervals (model-independent).

A sampler that stops early is compared with its *teacher* (the same prompt and initial
noise, run with many steps) image by image, so every image gives one number and the
differences between two methods are *paired*: the noise of which prompts and seeds were
drawn cancels, and a small difference becomes measurable.

- per image: :func:`latent_mse` ``mean((z - z_T)^2)``, :func:`psnr`
  ``10 log10(R^2 / mean((x - x_T)^2))`` (``R`` the data range);
- per set: :func:`frechet_distance` ``||mu_g - mu_r||^2 + tr(S_g + S_r - 2 (S_r^{1/2} S_g
  S_r^{1/2})^{1/2})`` between Gaussians fitted to features, :func:`vendi_score`
  ``exp(-sum_k l_k log l_k)`` with ``l_k`` the eigenvalues of ``K / n`` for the cosine
  kernel ``K``;
- intervals: :func:`bootstrap` (the percentile bootstrap of any statistic of a resample of
  the ``n`` units), :func:`bootstrap_mean`, :func:`paired_difference` (of per-image values);
  for the Frechet distance :func:`jackknife_frechet` and
  :func:`paired_frechet_jackknife` (both methods leave out the same image, so the
  difference of the two distances is paired), and the bootstrap versions
  :func:`bootstrap_frechet`, :func:`paired_frechet_difference`.

Why a jackknife for the Frechet distance: a bootstrap resample repeats about a third of
the images, which shrinks the fitted covariance's effective sample size and *raises* the
distance (a biased statistic of ``n``). The percentile interval then sits above the value
(with 320 images in 64 dimensions, differences between two methods come out inflated by
about a fifth, so an interval can exclude zero for the wrong reason). Leaving one image
out changes the fit by ``O(1/n)`` only; the jackknife standard error matched the spread
of the difference over independent samples in simulation (``tests/integrations/test_metrics.py``).

Every estimate is an :class:`Estimate`: the value on the whole sample, the interval and
the number of units ``n``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Estimate",
    "latent_mse",
    "psnr",
    "frechet_distance",
    "vendi_score",
    "bootstrap",
    "bootstrap_mean",
    "paired_difference",
    "bootstrap_frechet",
    "paired_frechet_difference",
    "jackknife_frechet",
    "paired_frechet_jackknife",
    "disjoint_seed_sets",
]


@dataclass(frozen=True)
class Estimate:
    """A statistic on the whole sample with its percentile-bootstrap interval.

    Attributes:
        value: the statistic on all ``n`` units.
        low, high: the interval's ends (``level`` coverage).
        n: the number of resampled units (images; prompts for the Vendi score).
        level: the interval's nominal coverage.
    """

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies strictly on one side of 0 (a resolved difference)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "level": self.level}

    @classmethod
    def from_dict(cls, d: dict) -> Estimate:
        return cls(float(d["value"]), float(d["low"]), float(d["high"]), int(d["n"]), float(d.get("level", 0.95)))

    def format(self, digits: int = 4) -> str:
        """``value [low, high]`` with ``digits`` significant digits."""
        f = lambda v: f"{v:.{digits}g}"  # noqa: E731
        return f"{f(self.value)} [{f(self.low)}, {f(self.high)}]"

    def __str__(self) -> str:
        return self.format()


# --------------------------------------------------------------------------- per image


def _pair(a, b, name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = (np.asarray(_numpy(v), dtype=np.float64) for v in (a, b))
    if x.shape != y.shape or x.ndim < 1 or len(x) == 0:
        raise ValueError(f"{name}: both arrays must have the same non-empty shape (n, ...), got {x.shape} and {y.shape}")
    return x.reshape(len(x), -1), y.reshape(len(y), -1)


def _numpy(v):
    if hasattr(v, "detach"):  # torch tensors without importing torch
        return v.detach().to("cpu").double().numpy()
    return v


def latent_mse(z, z_teacher) -> np.ndarray:
    """Per-image mean squared error ``mean((z_i - z_T,i)^2)`` over all but the first axis: ``(n,)``."""
    x, y = _pair(z, z_teacher, "latent_mse")
    return ((x - y) ** 2).mean(1)


def psnr(x, x_teacher, data_range: float = 1.0) -> np.ndarray:
    """Per-image PSNR in dB, ``10 log10(R^2 / mean((x_i - x_T,i)^2))``: ``(n,)`` (inf where equal)."""
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range!r}")
    a, b = _pair(x, x_teacher, "psnr")
    mse = ((a - b) ** 2).mean(1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


# --------------------------------------------------------------------------- per set


def _features(f, name: str) -> np.ndarray:
    a = np.asarray(_numpy(f), dtype=np.float64)
    if a.ndim != 2 or len(a) < 2:
        raise ValueError(f"{name} must be an (n, d) array with n >= 2, got shape {a.shape}")
    return a


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _frechet(mu1, s1, r1, mu2, s2) -> float:
    """FD from the first set's mean, covariance and covariance square root ``r1``, and the second's."""
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def _fit(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a.mean(0), np.atleast_2d(np.cov(a, rowvar=False))


def frechet_distance(features, reference) -> float:
    """Frechet distance between Gaussians fitted to ``(n1, d)`` and ``(n2, d)`` features.

    ``tr((S_g S_r)^{1/2})`` is computed as ``tr((S_r^{1/2} S_g S_r^{1/2})^{1/2})`` with
    symmetric eigendecompositions in float64 (the inner matrix is positive semi-definite).
    """
    a, b = _features(features, "features"), _features(reference, "reference")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features and reference must have the same d, got {a.shape[1]} and {b.shape[1]}")
    mu_r, s_r = _fit(b)
    mu_g, s_g = _fit(a)
    return _frechet(mu_r, s_r, _sqrtm_psd(s_r), mu_g, s_g)


def vendi_score(features) -> float:
    """Vendi score (q = 1) of ``(n, d)`` features with the cosine kernel; between 1 and n."""
    x = np.asarray(_numpy(features), dtype=np.float64)
    if x.ndim != 2 or len(x) < 1:
        raise ValueError(f"features must be a non-empty (n, d) array, got shape {x.shape}")
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    lam = np.clip(np.linalg.eigvalsh(x @ x.T / len(x)), 0, None)
    lam = lam[lam > 0]
    return float(np.exp(-(lam * np.log(lam)).sum()))


# --------------------------------------------------------------------------- bootstrap


def _check_boot(n_boot: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"n_boot must be an int >= 10, got {n_boot!r}")
    if not (isinstance(level, float) and 0.0 < level < 1.0):
        raise ValueError(f"level must be a float in (0, 1), got {level!r}")


def _interval(value: float, reps: np.ndarray, n: int, level: float) -> Estimate:
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return Estimate(float(value), float(lo), float(hi), int(n), level)


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, *, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> Estimate:
    """Percentile bootstrap of ``statistic(indices)`` over ``n`` units.

    ``statistic`` receives an index array (``arange(n)`` for the value, then ``n_boot``
    resamples drawn with replacement by ``numpy.random.default_rng(seed)``); the interval is
    the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled statistics.
    """
    _check_boot(n_boot, level)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (units to resample), got {n!r}")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    reps = np.array([statistic(i) for i in idx], dtype=np.float64)
    return _interval(statistic(np.arange(n)), reps, n, level)


def _values(v, name: str) -> np.ndarray:
    a = np.asarray(_numpy(v), dtype=np.float64).reshape(-1)
    if len(a) < 2:
        raise ValueError(f"{name} must hold at least 2 values, got {len(a)}")
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise ValueError(f"{name} must be finite, got {bad} infinite or NaN value{'s' if bad > 1 else ''} of {len(a)} "
                         "(a PSNR is infinite for an image identical to the teacher's: a row that is the teacher "
                         "itself has no paired measures)")
    return a


def bootstrap_mean(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """The mean of per-unit ``values`` with its percentile-bootstrap interval."""
    _check_boot(n_boot, level)
    v = _values(values, "values")
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    return _interval(v.mean(), v[idx].mean(1), len(v), level)


def paired_difference(a, b, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """``mean(a_i - b_i)`` over paired units (same prompt and seed) with its bootstrap interval."""
    x, y = _values(a, "a"), _values(b, "b")
    if len(x) != len(y):
        raise ValueError(f"a and b must be paired (the same length), got {len(x)} and {len(y)}")
    return bootstrap_mean(x - y, n_boot=n_boot, level=level, seed=seed)


_REFERENCE_MEMO: dict[tuple, list] = {}


def _frechet_resampler(reference: np.ndarray, resample_reference: bool, seed: int, n_boot: int):
    """Per replicate ``k``, the reference's ``(mu, S, S^{1/2})`` (fixed, or resampled once per replicate).

    The reference resamples come from their own stream (``default_rng([seed, 1])``), so every
    call with the same reference, ``seed`` and ``n_boot`` sees the same ones; they are kept
    (for the last few references) instead of being recomputed for each row of a table.
    """
    fixed = _fit(reference)
    fixed = (*fixed, _sqrtm_psd(fixed[1]))
    if not resample_reference:
        return lambda k: fixed, fixed
    key = (hashlib.sha1(np.ascontiguousarray(reference).tobytes()).hexdigest(), reference.shape, n_boot, seed)
    if key not in _REFERENCE_MEMO:
        ridx = np.random.default_rng([seed, 1]).integers(0, len(reference), size=(n_boot, len(reference)))
        stats = []
        for k in range(n_boot):
            mu, s = _fit(reference[ridx[k]])
            stats.append((mu, s, _sqrtm_psd(s)))
        while len(_REFERENCE_MEMO) >= 2:
            _REFERENCE_MEMO.pop(next(iter(_REFERENCE_MEMO)))
        _REFERENCE_MEMO[key] = stats
    memo = _REFERENCE_MEMO[key]
    return (lambda k: memo[k]), fixed


def bootstrap_frechet(features, reference, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                      resample_reference: bool = True) -> Estimate:
    """Frechet distance of ``features`` to ``reference`` with a bootstrap interval over images.

    The interval is shifted upwards by the resampling's repeated images (module docstring);
    :func:`jackknife_frechet` is the interval to report.

    Each replicate resamples the generated images (and, with ``resample_reference``, the
    reference images independently), so the interval covers both sets' sampling noise.
    """
    _check_boot(n_boot, level)
    f, r = _features(features, "features"), _features(reference, "reference")
    if f.shape[1] != r.shape[1]:
        raise ValueError(f"features and reference must have the same d, got {f.shape[1]} and {r.shape[1]}")
    idx = np.random.default_rng(seed).integers(0, len(f), size=(n_boot, len(f)))
    ref_stats, fixed = _frechet_resampler(r, resample_reference, seed, n_boot)
    value = _frechet(*fixed, *_fit(f))
    reps = np.array([_frechet(*ref_stats(k), *_fit(f[idx[k]])) for k in range(n_boot)])
    return _interval(value, reps, len(f), level)


def paired_frechet_difference(features_a, features_b, reference, *, n_boot: int = 1000, level: float = 0.95,
                              seed: int = 0, resample_reference: bool = True) -> Estimate:
    """``FD(a, ref) - FD(b, ref)`` with both image sets resampled by the *same* indices.

    Biased like :func:`bootstrap_frechet` (differences come out inflated);
    :func:`paired_frechet_jackknife` is the interval to report.

    Row ``i`` of ``features_a`` and of ``features_b`` must come from the same prompt and
    seed; each replicate draws one index set for both (and one reference resample for
    both), so the interval is that of a paired difference.
    """
    _check_boot(n_boot, level)
    fa, fb, r = (_features(x, name) for x, name in ((features_a, "features_a"), (features_b, "features_b"),
                                                    (reference, "reference")))
    if fa.shape != fb.shape:
        raise ValueError(f"features_a and features_b must be paired (the same shape), got {fa.shape} and {fb.shape}")
    if fa.shape[1] != r.shape[1]:
        raise ValueError(f"features and reference must have the same d, got {fa.shape[1]} and {r.shape[1]}")
    idx = np.random.default_rng(seed).integers(0, len(fa), size=(n_boot, len(fa)))
    ref_stats, fixed = _frechet_resampler(r, resample_reference, seed, n_boot)
    value = _frechet(*fixed, *_fit(fa)) - _frechet(*fixed, *_fit(fb))
    reps = []
    for k in range(n_boot):
        rs = ref_stats(k)
        reps.append(_frechet(*rs, *_fit(fa[idx[k]])) - _frechet(*rs, *_fit(fb[idx[k]])))
    return _interval(value, np.array(reps), len(fa), level)


def _normal_interval(value: float, variance: float, n: int, level: float) -> Estimate:
    from statistics import NormalDist

    half = NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(max(variance, 0.0))
    return Estimate(float(value), float(value - half), float(value + half), int(n), level)


def _jackknife_variance(values: np.ndarray) -> float:
    """``(g - 1) / g * sum (t_i - mean t)^2`` over ``g`` leave-one(-group)-out values ``t_i``."""
    g = len(values)
    return float((g - 1) / g * ((values - values.mean()) ** 2).sum())


def _reference_groups(n: int, groups: int) -> list[np.ndarray]:
    return [k for k in np.array_split(np.arange(n), min(groups, n)) if len(k)]


def _frechet_parts(features, reference, name="features"):
    f, r = _features(features, name), _features(reference, "reference")
    if f.shape[1] != r.shape[1]:
        raise ValueError(f"{name} and reference must have the same d, got {f.shape[1]} and {r.shape[1]}")
    if len(f) < 3:
        raise ValueError(f"{name} must hold at least 3 rows for a jackknife, got {len(f)}")
    return f, r


def _ref_fits(r: np.ndarray, reference_groups: int):
    """The reference's full fit and its leave-one-group-out fits (0 groups: fixed reference)."""
    full = _fit(r)
    full = (*full, _sqrtm_psd(full[1]))
    outs = []
    for g in (_reference_groups(len(r), reference_groups) if reference_groups else []):
        mu, s = _fit(np.delete(r, g, axis=0))
        outs.append((mu, s, _sqrtm_psd(s)))
    return full, outs


def jackknife_frechet(features, reference, *, level: float = 0.95, reference_groups: int = 100) -> Estimate:
    """Frechet distance with a normal interval from jackknife standard errors.

    The variance is the delete-one jackknife over the generated images plus the delete-a-
    group jackknife over the reference (``reference_groups`` groups; 0: the reference is
    taken as fixed); the interval is ``value +- z SE``. ``n`` is the number of images.
    """
    _check_boot(10, level)
    f, r = _frechet_parts(features, reference)
    full, outs = _ref_fits(r, reference_groups)
    value = _frechet(*full, *_fit(f))
    var = _jackknife_variance(np.array([_frechet(*full, *_fit(np.delete(f, i, axis=0))) for i in range(len(f))]))
    if outs:
        var += _jackknife_variance(np.array([_frechet(*o, *_fit(f)) for o in outs]))
    return _normal_interval(value, var, len(f), level)


def paired_frechet_jackknife(features_a, features_b, reference, *, level: float = 0.95,
                             reference_groups: int = 100) -> Estimate:
    """``FD(a, ref) - FD(b, ref)`` with a jackknife interval; image ``i`` is left out of both sets at once.

    Row ``i`` of ``features_a`` and ``features_b`` must come from the same prompt and seed.
    The reference's delete-a-group variance of the difference is added (it mostly cancels).
    """
    _check_boot(10, level)
    fa, r = _frechet_parts(features_a, reference, "features_a")
    fb, _ = _frechet_parts(features_b, reference, "features_b")
    if fa.shape != fb.shape:
        raise ValueError(f"features_a and features_b must be paired (the same shape), got {fa.shape} and {fb.shape}")
    full, outs = _ref_fits(r, reference_groups)
    value = _frechet(*full, *_fit(fa)) - _frechet(*full, *_fit(fb))
    loo = [_frechet(*full, *_fit(np.delete(fa, i, axis=0))) - _frechet(*full, *_fit(np.delete(fb, i, axis=0)))
           for i in range(len(fa))]
    var = _jackknife_variance(np.array(loo))
    if outs:
        fit_a, fit_b = _fit(fa), _fit(fb)
        var += _jackknife_variance(np.array([_frechet(*o, *fit_a) - _frechet(*o, *fit_b) for o in outs]))
    return _normal_interval(value, var, len(fa), level)


def disjoint_seed_sets(count: int, size: int, start: int = 0) -> list[list[int]]:
    """``count`` disjoint runs of ``size`` consecutive seeds from ``start``: 2, 16 -> 0-15, 16-31."""
    for name, v, lo in (("count", count, 1), ("size", size, 1), ("start", start, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return [list(range(start + k * size, start + (k + 1) * size)) for k in range(count)]

