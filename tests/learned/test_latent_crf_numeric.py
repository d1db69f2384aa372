"""LatentCRF's numeric edges: inputs of another floating dtype than the layer's, and non-finite
inputs (refused in both modes, before the batch-norm statistics can see them)."""

from __future__ import annotations

import pytest
import torch

import energycrf as ec


def _crf(normalization="batch", cond_dim=None):
    torch.manual_seed(0)
    crf = ec.LatentCRF(channels=2, cond_dim=cond_dim, num_iterations=2, num_filters=2, hidden_channels=4,
                       attention_dim=4, normalization=normalization)
    return crf.eval()


@pytest.mark.parametrize("normalization", ["batch", "mean_field"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_runs_in_the_layers_dtype(normalization, dtype):
    crf = _crf(normalization, cond_dim=3)
    x, c = torch.randn(2, 2, 8, 8).to(dtype), torch.randn(2, 3).to(dtype)
    y = crf(x, c)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, crf(x.float(), c.float()).to(dtype))  # computed in float32, returned in x's dtype
    assert next(crf.parameters()).dtype == torch.float32


def test_lower_precision_input_on_a_double_layer_is_computed_in_double():
    crf = _crf().double()
    x = torch.randn(1, 2, 8, 8)
    y = crf(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, crf(x.double()).float())


@pytest.mark.parametrize("layer, given", [(torch.float32, torch.float64), (torch.float16, torch.float32),
                                          (torch.bfloat16, torch.float16)])
def test_more_precise_input_than_the_layer_is_refused(layer, given):
    crf = _crf().to(layer)
    with pytest.raises(TypeError, match=rf"x .*{given}.*layer.*{layer}"):
        crf(torch.randn(1, 2, 8, 8, dtype=given))


@pytest.mark.parametrize("train", [False, True])
def test_nonfinite_input_is_refused_naming_x(train):
    crf = _crf().train(train)
    x = torch.randn(2, 2, 8, 8)
    x[1, 0, 4, 4] = float("nan")
    x[0, 1, 0, 0] = float("inf")
    stats = [b.clone() for b in crf.buffers()]
    with pytest.raises(ValueError, match=r"x holds 2 non-finite values \(NaN or inf\) of 256"):
        crf(x)
    assert all(torch.equal(a, b) for a, b in zip(stats, crf.buffers()))  # the running statistics are untouched
    assert torch.isfinite(crf.eval()(torch.randn(2, 2, 8, 8))).all()


def test_nonfinite_condition_is_refused_naming_c():
    crf = _crf(cond_dim=3)
    c = torch.randn(2, 5, 3)
    c[0, 2, 1] = float("-inf")
    with pytest.raises(ValueError, match=r"c holds 1 non-finite value"):
        crf(torch.randn(2, 2, 8, 8), c)
