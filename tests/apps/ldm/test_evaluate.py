"""Evaluation metrics against references, and evaluate() on a tiny random pipeline."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from energycrf.apps.ldm import evaluate as E
from energycrf.apps.ldm.classifier import FashionClassifier
from tests.apps.ldm.conftest import needs_text

with warnings.catch_warnings():  # vendi-score imports deprecated scipy namespaces
    warnings.simplefilter("ignore", DeprecationWarning)
    from vendi_score import vendi  # the reference implementation (pip install vendi-score)


def _frechet_scipy(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@given(n1=st.integers(20, 60), n2=st.integers(20, 60), d=st.integers(1, 6), seed=st.integers(0, 1000))
def test_frechet_matches_scipy_sqrtm(n1, n2, d, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(n2, d)) * 2 + 1
    assert E.frechet_distance(a, b) == pytest.approx(_frechet_scipy(a, b), rel=1e-6, abs=1e-8)


def test_frechet_identities():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4))
    assert E.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert E.frechet_distance(a, a + shift) == pytest.approx((shift**2).sum(), rel=1e-8)
    with pytest.raises(ValueError, match="same d"):
        E.frechet_distance(a, a[:, :3])


@given(n=st.integers(2, 16), d=st.integers(1, 20), seed=st.integers(0, 1000))
def test_vendi_matches_vendi_package(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    with warnings.catch_warnings():  # it imports deprecated scipy namespaces lazily
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = float(vendi.score_K(xn @ xn.T))
    assert E.vendi_score(x) == pytest.approx(ref, rel=1e-6)


def test_vendi_bounds():
    assert E.vendi_score(np.ones((8, 5))) == pytest.approx(1.0)
    assert E.vendi_score(np.eye(6)) == pytest.approx(6.0)
    assert E.vendi_score(np.eye(6) * 3.0) == pytest.approx(6.0)  # cosine: scale-free


def test_methods_of_the_table():
    rows = E.table_methods()
    assert [m.unet_calls for m in rows] == [50, 33, 33, 20, 20, 33, 20]
    p20 = E.plan_20()
    s20 = p20.schedule(steps_offset=1)
    assert s20.splice_timestep == 201 and s20.post == (1,)  # same splice point as the paper's plan
    with pytest.raises(ValueError, match="exactly one"):
        E.Method("x")
    with pytest.raises(ValueError, match="scheduler"):
        E.Method("x", steps=3, scheduler="euler")


class _CountingCRF(torch.nn.Module):
    """Shrinks the latent towards 0; counts calls and records the condition's shape."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.calls, self.cond_shape = 0, None

    def forward(self, z, c):
        self.calls += 1
        self.cond_shape = tuple(c.shape)
        return self.w * z


@needs_text
def test_evaluate_on_tiny_pipeline(tiny_pipe):
    from energycrf.integrations.plan import SplicePlan

    torch.manual_seed(0)
    clf = FashionClassifier(width=4).eval()
    ref = E.Reference(np.random.default_rng(0).normal(size=(40, 64)))
    prompts = [("a photo of a sneaker", 7), ("a bag", 8), ("a coat", 4)]
    kw = dict(classifier=clf, reference=ref, progress=False, guidance_scale=2.0, keep_images=True)
    r = E.evaluate(tiny_pipe, None, None, prompts, [0, 1], num_inference_steps=3, **kw)
    assert r["images"] == 6 and r["unet_calls"] == 3 and r["method"] == "LDM (DDIM)"
    assert np.isfinite([r["frechet"], r["vendi"], r["ms_per_image"]]).all()
    assert 1.0 <= r["vendi"] <= 2.0 and 0.0 <= r["accuracy"] <= 1.0
    # fixed seeds: the same images again, per (prompt, seed), whatever the batching
    r2 = E.evaluate(tiny_pipe, None, None, prompts, [0, 1], num_inference_steps=3, prompts_per_call=1, **kw)
    torch.testing.assert_close(r2["samples"], r["samples"], atol=1e-5, rtol=0)
    assert r2["frechet"] == pytest.approx(r["frechet"], rel=1e-4)
    # a CRF plan: applied once per call, on the positive token states, the schedule changes the images
    crf = _CountingCRF()
    plan = SplicePlan(pre_steps=4, pre_run=2, post_steps=8, post_run=1)
    rc = E.evaluate(tiny_pipe, crf, plan, prompts, [0, 1], prompts_per_call=3, **kw)
    assert rc["unet_calls"] == 3 and rc["method"] == "LatentCRF" and rc["plan"]["pre_run"] == 2
    assert crf.calls == 2  # warm-up call + one call for the three prompts
    assert crf.cond_shape == (6, 16, 384)
    assert not torch.allclose(rc["samples"], r["samples"])
    rd = E.evaluate(tiny_pipe, None, None, prompts, [0, 1], num_inference_steps=3, scheduler="dpm++", **kw)
    assert rd["method"] == "DPM-Solver++" and not torch.allclose(rd["samples"], r["samples"])
    assert type(tiny_pipe.scheduler).__name__ == "DDIMScheduler"  # restored
    md = E.markdown_table([r, rc, rd])
    assert md.count("\n") == 4 and "LatentCRF" in md and "DPM-Solver++" in md
    with pytest.raises(ValueError, match="crf is None"):
        E.evaluate(tiny_pipe, None, plan, prompts, [0, 1], **kw)
    with pytest.raises(ValueError, match="pairs"):
        E.evaluate(tiny_pipe, None, None, ["a bag"], [0, 1], **kw)
    with pytest.raises(ValueError, match="seeds"):
        E.evaluate(tiny_pipe, None, None, prompts, [0], **kw)
