"""Compatibility P(c) of the pairwise term: conformance of Pairwise with each compatibility,
M = P^T P, text conditioning from pooled and token embeddings, bad arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.testing.strategies import tensors
from energycrf.testing.suite import RegistryConformance

K = ec.energies


class TestCompatibilityConformance(RegistryConformance):
    family = "compatibility"


def _text_pairwise(C, D, seed):
    torch.manual_seed(seed)
    E = K.Pairwise(channels=C, compatibility="text", cond_dim=D).double()
    with torch.no_grad():
        for p in E.compatibility.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return E


@given(C=st.integers(1, 4), D=st.integers(1, 5), L=st.integers(1, 4), data=st.data())
def test_text_compatibility_is_psd_and_reads_token_means(C, D, L, data):
    """M(c) = P(c)^T P(c) is symmetric PSD; tokens [B, L, D] act through their mean over L."""
    E = _text_pairwise(C, D, data.draw(st.integers(0, 1000)))
    tokens = data.draw(tensors((2, L, D)))
    m_tok = E.compatibility_matrix(tokens, 2, torch.float64, "cpu")
    m_pool = E.compatibility_matrix(tokens.mean(1), 2, torch.float64, "cpu")
    torch.testing.assert_close(m_tok, m_pool, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m_tok, m_tok.transpose(-1, -2))
    assert float(torch.linalg.eigvalsh(m_tok.detach()).min()) >= -1e-10
    p = E.compatibility.projection(tokens, 2, torch.float64, "cpu")
    torch.testing.assert_close(m_tok, p.transpose(-1, -2) @ p)


def test_text_condition_changes_the_energy_per_sample():
    E = _text_pairwise(3, 4, 0)
    torch.manual_seed(1)
    y = torch.randn(1, 3, 4, 4, dtype=torch.float64).expand(2, -1, -1, -1)
    c = torch.randn(2, 4, dtype=torch.float64)
    e = E(y, y, c)
    e = e.detach()
    assert abs(float(e[0] - e[1])) > 1e-6 * float(e.abs().max())  # same latents, different prompts


@given(C=st.integers(1, 4), rows=st.integers(1, 5), data=st.data())
def test_fixed_matrix_gives_its_gram(C, rows, data):
    p = data.draw(tensors((rows, C)))
    E = K.Pairwise(channels=C, compatibility=p.float()).double()
    m = E.compatibility_matrix(None, 3, torch.float64, "cpu")
    p32 = p.float().double()
    torch.testing.assert_close(m, (p32.T @ p32).expand(3, C, C), rtol=1e-12, atol=1e-12)


def test_identity_and_learnable_start_at_identity():
    for comp in ("identity", None, "learnable"):
        E = K.Pairwise(channels=3, compatibility=comp)
        torch.testing.assert_close(E.compatibility_matrix(None, 2, torch.float64, "cpu").detach(),
                                   torch.eye(3, dtype=torch.float64).expand(2, 3, 3))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: K.Pairwise(channels=3, compatibility="bogus"), r"compatibility.*identity.*bogus"),
        (lambda: K.Pairwise(channels=3, compatibility="text"), r"cond_dim"),
        (lambda: K.Pairwise(channels=3, compatibility=torch.ones(2, 4)), r"compatibility.*4.*channels=3"),
        (lambda: K.Pairwise(channels=3, compatibility=torch.ones(3)), r"projection.*\[D, C\].*\(3,\)"),
        (lambda: K.Pairwise(channels=0), r"channels.*>= 1.*0"),
        (lambda: K.TextCompatibility(channels=3, cond_dim=0), r"cond_dim.*>= 1.*0"),
        (lambda: K.IdentityCompatibility(channels=-2), r"channels.*-2"),
    ],
)
def test_bad_compatibility_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_text_term_needs_a_condition_of_its_width():
    E = K.Pairwise(channels=2, compatibility="text", cond_dim=5)
    y = torch.zeros(2, 2, 3, 3)
    with pytest.raises(ValueError, match=r"\bc\b.*5"):
        E(y, y)
    with pytest.raises(ValueError, match=r"(?s)\bc\b.*5.*\(2, 4\)"):
        E(y, y, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"(?s)\bc\b.*5.*\(2, 3, 4\)"):
        E(y, y, torch.zeros(2, 3, 4))


def test_condition_of_another_float_dtype_is_cast_or_clearly_refused():
    """A float32 prompt embedding with float64 latents: either the result equals the float64
    one, or a TypeError/ValueError names c (never a RuntimeError from deep inside)."""
    E = _text_pairwise(3, 4, 0)
    torch.manual_seed(2)
    y = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    c64 = torch.randn(2, 4, dtype=torch.float64)
    try:
        got = E(y, y, c64.float())
    except (TypeError, ValueError) as err:
        assert "c" in str(err) and "float32" in str(err)
    else:
        torch.testing.assert_close(got, E(y, y, c64.float().double()), rtol=1e-12, atol=1e-12)
