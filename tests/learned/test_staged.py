"""Stage-wise unrolled gradient descent (energycrf.learned.unrolled.Staged) and the staged
Field-of-Experts denoiser: the step against its formula written out with conv2d, against
explicit gradient descent on a shared quadratic energy, gradients by gradcheck, saving and
loading, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import energycrf as ec
from energycrf.apps.denoise import PixelDenoiser, StagedFoEDenoiser
from energycrf.learned.unrolled import Staged

K = ec.energies


def _stage(channels, filters, size, seed):
    torch.manual_seed(seed)
    potential = K.PiecewiseLinear(num_knots=9, span=2.0, num_experts=filters)
    with torch.no_grad():
        potential.values.add_(0.2 * torch.randn_like(potential.values))
    foe = K.FieldOfExperts(channels=channels, num_filters=filters, kernel_size=size, init_scale=0.8,
                           potential=potential)
    return (K.Unary(weight=0.3 + 0.1 * seed % 3, learnable=True) + foe).double()


@settings(max_examples=10)
@given(stages=st.integers(1, 3), channels=st.integers(1, 2), filters=st.integers(1, 3),
       size=st.sampled_from([1, 3, 5]), h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 100),
       step=st.floats(0.1, 1.5))
def test_each_stage_is_the_written_out_reaction_diffusion_step(stages, channels, filters, size, h, w, seed, step):
    """y_t = y_{t-1} - eta (2 w_t (y_{t-1} - x) + sum_m J_m^- rho'_m(J_m y_{t-1})), J^- by conv_transpose2d."""
    energies = [_stage(channels, filters, size, seed + t) for t in range(stages)]
    layer = Staged(energies, step_size=step)
    x = torch.randn(2, channels, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    want, y = [], x
    for energy in energies:
        unary, foe = energy[0], energy[1]
        j = foe.filters().double()
        u = F.conv2d(y, j, padding=size // 2)
        diffusion = F.conv_transpose2d(foe.potential.rho_prime(u), j, padding=size // 2)
        y = y - step * (2 * unary.weight() * (y - x) + diffusion)
        want.append(y)
    got = layer(x, return_all=True)
    assert len(got) == stages
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer(x), got[-1], rtol=1e-14, atol=1e-14)


def test_shared_quadratic_energy_is_plain_gradient_descent():
    """T stages of one energy with step eta = T fixed-step gradient-descent iterations."""
    torch.manual_seed(0)
    energy = (K.Unary(weight=1.0) + K.Pairwise(channels=2, compatibility="learnable")).double()
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64)
    layer = Staged([energy] * 4, step_size=0.05)
    y = x
    for _ in range(4):
        y = y - 0.05 * torch.func.grad(lambda v: energy(v, x).sum())(y)
    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)


def test_gradients_with_respect_to_every_parameter_and_the_input():
    energies = [_stage(1, 2, 3, t) for t in range(2)]
    layer = Staged(energies)
    names = [n for n, _ in layer.named_parameters()]
    assert any("potential.values" in n for n in names) and any("weight" in n for n in names)
    params = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters())
    x = torch.randn(1, 1, 5, 4, dtype=torch.float64, requires_grad=True)

    def run(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


def test_staged_denoiser_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = StagedFoEDenoiser(num_stages=2, num_filters=3, kernel_size=3, num_knots=7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    den = PixelDenoiser(model, sigma=25, kind="staged_foe", pad=6).eval()
    den.save_pretrained(tmp_path / "d")
    assert {p.suffix for p in (tmp_path / "d").iterdir()} == {".json", ".safetensors"}
    back = PixelDenoiser.from_pretrained(tmp_path / "d").eval()
    assert isinstance(back.model, StagedFoEDenoiser) and back.pad == 6
    x = torch.rand(1, 1, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(back(x), den(x), rtol=0, atol=0)
    assert len(back.model.energies) == 2 and all(isinstance(e, ec.Energy) for e in back.model.energies)


def test_bad_input():
    energy = K.Unary()
    with pytest.raises(ValueError, match="energies: expected at least one"):
        Staged([])
    with pytest.raises(TypeError, match=r"energies\[1\]: expected an energycrf Energy, got Linear"):
        Staged([energy, torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="step_size: expected a positive number, got 0"):
        Staged([energy], step_size=0)
    layer = Staged([energy])
    with pytest.raises(ValueError, match="x"):
        layer(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"y0: expected a tensor shaped like x \(1, 1, 4, 4\)"):
        layer(torch.zeros(1, 1, 4, 4), y0=torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="num_stages: expected an int >= 1, got 0"):
        StagedFoEDenoiser(num_stages=0)
    with pytest.raises(ValueError, match="num_filters"):
        StagedFoEDenoiser(num_filters=30, kernel_size=5)
