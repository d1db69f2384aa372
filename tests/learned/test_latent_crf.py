"""The learned LatentCRF layer: Algorithm 1 / eq. 11, its faithfulness to mean-field, validation, init."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import energycrf as ec
from energycrf.energies import FieldOfExperts, LocalKernel, LongRangeKernel, Pairwise, Unary
from energycrf.energies.potentials import Charbonnier
from energycrf.solvers import MeanField, Problem
from energycrf.learned.latent_crf import LatentCRF


def _energy(seed, channels=4, *, per_channel=True, boundary="zeros", kernel=None, scales=(1.0, 1.0, 1.0),
            zero_center=True, text=False):
    g = torch.Generator().manual_seed(seed)
    w = (0.5 + torch.rand(channels, generator=g)) if per_channel else 1.3
    P = torch.eye(channels) + 0.3 * torch.randn(channels, channels, generator=g)
    pair = Pairwise(channels, kernel=kernel, compatibility="text" if text else P, cond_dim=6 if text else None)
    if text:
        with torch.no_grad():
            pair.compatibility.to_projection.weight.copy_(0.1 * torch.randn(channels * channels, 6, generator=g))
    foe = FieldOfExperts(channels, num_filters=6, kernel_size=3, zero_center=zero_center, init_scale=0.4,
                         boundary=boundary)
    with torch.no_grad():
        foe.weight.copy_(0.4 * torch.randn(foe.weight.shape, generator=g) / 3)
    su, sp, sf = scales
    E = su * Unary(weight=w) + sp * pair + sf * foe
    return E.double()


def _mean_field_iterates(E, x, c, steps):
    """y^{(1..T)} of the solvers helper's MeanField (damping 1), step by step."""
    problem, solver = Problem(E, x, c), MeanField(damping=1.0)
    y = x.clone()
    state = solver.init_state(problem, y, problem.energy(y), problem.grad(y))
    out = []
    for _ in range(steps):
        y = solver.step(problem, y, problem.energy(y), problem.grad(y), state).y
        out.append(y)
    return torch.stack(out)


# ----------------------------------------------------------------------------- faithfulness
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 2),
    channels=st.integers(1, 4),
    size=st.tuples(st.integers(5, 9), st.integers(5, 9)),
    per_channel=st.booleans(),
    zero_center=st.booleans(),
)
def test_from_energy_iterates_equal_mean_field(seed, batch, channels, size, per_channel, zero_center):
    E = _energy(seed, channels, per_channel=per_channel, zero_center=zero_center)
    x = torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    steps = 4
    layer = LatentCRF.from_energy(E, steps, return_all=True)
    got = layer(x)
    ref = _mean_field_iterates(E, x, None, steps)
    assert got.shape == (steps, *x.shape)
    torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-11)
    # and the driver's public solve() after k iterations
    res = ec.solve(E, x, method="mean_field", max_iters=steps, tol=0.0, gtol=0.0, on_diverge="ignore")
    torch.testing.assert_close(got[-1], res.y, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    "case",
    ["scaled", "long_range_circular", "text"],
)
def test_from_energy_faithful_variants(case):
    c = None
    if case == "scaled":
        E = _energy(3, scales=(0.7, 2.5, 1.8))
    elif case == "long_range_circular":
        E = _energy(4, kernel=LongRangeKernel(sigma=2.0, weight=0.2, boundary="circular"), boundary="circular")
    else:
        E = _energy(5, text=True)
        c = torch.randn(2, 3, 6, dtype=torch.float64)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    layer = LatentCRF.from_energy(E, 5, return_all=True)
    torch.testing.assert_close(layer(x, c), _mean_field_iterates(E, x, c, 5), rtol=1e-11, atol=1e-11)


def test_mean_field_step_is_eq_9_written_out():
    """One layer step by hand: K_i^{-1}(w x_i + M (W^s y)_i + 1/2 sum_m J_m^- relu(J_m y)), K_i = diag(w) + d_i M."""
    E = _energy(7)
    unary, pair, foe = E.terms[0].term, E.terms[1].term, E.terms[2].term
    x = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    y = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    w = unary.weight()
    M = pair.compatibility.weight.T @ pair.compatibility.weight
    d = pair.degree(6, 7, torch.float64, "cpu")
    J = foe.filters()
    u = torch.nn.functional.conv2d(y, J, padding=1)
    xi = 0.5 * torch.nn.functional.conv_transpose2d(torch.relu(u), J, padding=1)
    rhs = w.view(1, -1, 1, 1) * x + torch.einsum("cd,bdhw->bchw", M, pair.message(y)) + xi
    want = torch.empty_like(y)
    for i in range(6):
        for j in range(7):
            K = torch.diag(w) + d[i, j] * M
            want[0, :, i, j] = torch.linalg.solve(K, rhs[0, :, i, j])
    layer = LatentCRF.from_energy(E, 1)
    torch.testing.assert_close(foe.score(y), xi, rtol=1e-12, atol=1e-12)
    problem = Problem(E, x)
    mf = y - torch.linalg.solve(
        problem.curvature(y), problem.grad(y).permute(0, 2, 3, 1).unsqueeze(-1)
    ).squeeze(-1).permute(0, 3, 1, 2)
    torch.testing.assert_close(mf, want, rtol=1e-11, atol=1e-11)
    # starting at x, the layer's first iterate is eq. 9 at y = x
    rhs_x = w.view(1, -1, 1, 1) * x + torch.einsum("cd,bdhw->bchw", M, pair.message(x)) + foe.score(x)
    first = layer(x)
    for i, j in [(0, 0), (3, 4), (5, 6)]:
        K = torch.diag(w) + d[i, j] * M
        torch.testing.assert_close(first[0, :, i, j], torch.linalg.solve(K, rhs_x[0, :, i, j]), rtol=1e-11, atol=1e-11)


def test_constructed_linear_mean_field_layer_is_the_solver_on_its_own_terms():
    torch.manual_seed(0)
    crf = LatentCRF(channels=4, compatibility="linear", normalization="mean_field", unary_weight=0.8,
                    num_iterations=3, return_all=True).double()
    E = crf.unary + crf.pairwise + crf.field_of_experts
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(crf(x), _mean_field_iterates(E, x, None, 3), rtol=1e-11, atol=1e-11)


def test_untrained_mlp_mean_field_layer_is_the_mean_field_solver():
    """MLP output and gate start at (0, 1): an untrained layer is mean-field on Unary + Pairwise + FoE."""
    torch.manual_seed(1)
    crf = LatentCRF(channels=4, cond_dim=16, normalization="mean_field", num_iterations=3, return_all=True).double()
    E = crf.unary + crf.pairwise + crf.field_of_experts
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    c = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(crf(x, c), _mean_field_iterates(E, x, None, 3), rtol=1e-11, atol=1e-11)


def test_from_energy_rejects_what_it_cannot_represent():
    with pytest.raises(ValueError, match="ReLUExpert"):
        LatentCRF.from_energy(Unary() + Pairwise(4) + FieldOfExperts(4, potential=Charbonnier()))
    with pytest.raises(ValueError, match="Unary"):
        LatentCRF.from_energy(Pairwise(4) + FieldOfExperts(4))
    with pytest.raises(ValueError, match="at most one"):
        LatentCRF.from_energy(Unary() + Pairwise(4) + Pairwise(4))

    class Other(ec.Energy):
        def energy(self, y, x, c=None):
            return y.sum((1, 2, 3))

    with pytest.raises(ValueError, match="Other"):
        LatentCRF.from_energy(Unary() + Pairwise(4) + Other())
    with pytest.raises(TypeError, match="energy"):
        LatentCRF.from_energy("not an energy")
    with pytest.raises(TypeError, match="config"):
        LatentCRF.from_energy(Unary() + Pairwise(4)).config


# ----------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("normalization", ["batch", "group", "none", "mean_field"])
@pytest.mark.parametrize("compatibility", ["mlp", "linear"])
def test_conditions_tokens_pooled_none(compatibility, normalization):
    torch.manual_seed(0)
    crf = LatentCRF(channels=4, cond_dim=32, compatibility=compatibility, normalization=normalization,
                    num_iterations=2)
    x = torch.randn(2, 4, 8, 8)
    for c in (torch.randn(2, 7, 32), torch.randn(2, 32), None):
        y = crf(x, c)
        assert y.shape == x.shape and torch.isfinite(y).all()
        y.square().mean().backward()
        # every parameter takes part in the graph (DistributedDataParallel needs this); the learned
        # null embedding is an attention slot of the MLP, and only stands in for c=None in "linear"
        missing = [n for n, p in crf.named_parameters() if p.grad is None]
        assert missing == ([] if c is None or compatibility == "mlp" else ["null_condition"]), missing
        crf.zero_grad(set_to_none=True)


def test_public_example_from_the_design_note():
    crf = ec.LatentCRF(channels=4, cond_dim=768)
    x = torch.randn(1, 4, 8, 8)
    for c in (torch.randn(1, 77, 768), torch.randn(1, 768), None):
        assert crf(x, c).shape == x.shape


def test_condition_changes_the_output_once_trained_layers_move():
    torch.manual_seed(0)
    crf = LatentCRF(channels=4, cond_dim=8, num_iterations=2, normalization="none")
    with torch.no_grad():  # move the zero-initialised layers off zero
        for p in crf.network.parameters():
            p.add_(0.3 * torch.randn_like(p))
        crf.gate.fill_(0.5)
    x = torch.randn(2, 4, 8, 8)
    c1, c2 = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    assert not torch.allclose(crf(x, c1), crf(x, c2))
    assert not torch.allclose(crf(x, c1), crf(x, None))
    assert not torch.allclose(crf(x, c1), crf(x, c1[:, :1]))  # attention sees the tokens, not only their mean


def test_operators_are_the_energies_own(monkeypatch):
    """Each iteration calls Pairwise.message and FieldOfExperts.score once (no re-implementation)."""
    calls = {"message": 0, "score": 0, "matrix": 0}
    orig_message, orig_score, orig_matrix = Pairwise.message, FieldOfExperts.score, Pairwise.compatibility_matrix

    def message(self, y):
        calls["message"] += 1
        return orig_message(self, y)

    def score(self, y):
        calls["score"] += 1
        return orig_score(self, y)

    def matrix(self, *a, **k):
        calls["matrix"] += 1
        return orig_matrix(self, *a, **k)

    monkeypatch.setattr(Pairwise, "message", message)
    monkeypatch.setattr(FieldOfExperts, "score", score)
    monkeypatch.setattr(Pairwise, "compatibility_matrix", matrix)
    crf = LatentCRF(channels=4, num_iterations=5, compatibility="linear")
    crf(torch.randn(1, 4, 8, 8))
    assert calls == {"message": 5, "score": 5, "matrix": 1}


def test_weights_shared_and_per_iteration_outputs():
    a = LatentCRF(channels=4, cond_dim=8, num_iterations=2)
    b = LatentCRF(channels=4, cond_dim=8, num_iterations=9)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    torch.manual_seed(0)
    crf = LatentCRF(channels=4, num_iterations=4, normalization="mean_field").double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    all_ = crf(x, return_all=True)
    assert all_.shape == (4, 2, 4, 8, 8)
    torch.testing.assert_close(all_[-1], crf(x))
    torch.testing.assert_close(all_[1], crf(x, num_iterations=2))
    # iterate t+1 is one step from iterate t: the composition is shared-weight unrolling
    assert not torch.allclose(all_[0], all_[1])


def test_untrained_layer_is_close_to_identity_or_a_smoother():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16)
    for normalization in ("none", "batch"):
        crf = LatentCRF(channels=4, cond_dim=16, normalization=normalization).eval()
        rel = ((crf(x, torch.randn(2, 5, 16)) - x).norm() / x.norm()).item()
        assert rel < 0.15, (normalization, rel)
    # batch norm in training mode standardises x per channel
    crf = LatentCRF(channels=4, normalization="batch", filter_init_scale=1e-4)
    z = 3.0 + 2.0 * x
    y = crf(z)
    ref = (z - z.mean((0, 2, 3), keepdim=True)) / z.var((0, 2, 3), unbiased=False, keepdim=True).add(1e-5).sqrt()
    torch.testing.assert_close(y, ref, rtol=1e-3, atol=1e-3)
    # mean-field init denoises a smooth signal
    h = torch.linspace(0, 3.14, 16)
    clean = (torch.sin(h)[:, None] * torch.cos(h)[None, :]).expand(2, 4, 16, 16).contiguous()
    noisy = clean + 0.3 * torch.randn(clean.shape)
    crf = LatentCRF(channels=4, normalization="mean_field")
    assert (crf(noisy) - clean).square().mean() < 0.6 * (noisy - clean).square().mean()


def test_a_few_training_steps_lower_the_denoising_loss():
    torch.manual_seed(0)
    h = torch.linspace(0, 6.28, 8)
    clean = (torch.sin(h)[:, None] + torch.cos(h)[None, :]).expand(4, 1, 8, 8).contiguous()
    crf = LatentCRF(channels=1, cond_dim=None, num_iterations=3, normalization="group")
    opt = torch.optim.Adam(crf.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        noisy = ec.losses.add_noise(clean, 0.8)
        loss = ec.losses.denoising_loss(crf(noisy), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_input_validation():
    crf = LatentCRF(channels=4, cond_dim=8, num_iterations=1)
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="channels"):
        crf(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="rank 4"):
        crf(torch.randn(4, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        crf(torch.ones(2, 4, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        crf([1.0])
    with pytest.raises(ValueError, match="cond_dim=8"):
        crf(x, torch.randn(2, 7, 9))
    with pytest.raises(ValueError, match="batch size"):
        crf(x, torch.randn(3, 8))
    with pytest.raises(ValueError, match="c must have shape"):
        crf(x, torch.randn(2, 1, 1, 8))
    with pytest.raises(ValueError, match="not conditioned"):
        LatentCRF(channels=4)(x, torch.randn(2, 8))
    with pytest.raises(ValueError, match="num_iterations"):
        crf(x, num_iterations=0)
    for kwargs, exc, word in [
        ({"compatibility": "quadratic"}, ValueError, "compatibility"),
        ({"normalization": "layer"}, ValueError, "normalization"),
        ({"conditioning": "concat"}, ValueError, "conditioning"),
        ({"kernel_size": 4}, ValueError, "kernel_size"),
        ({"num_iterations": 0}, ValueError, "num_iterations"),
        ({"channels": 2.0}, TypeError, "channels"),
        ({"unary_weight": -1.0}, ValueError, "unary_weight"),
        ({"normalization": "group", "num_groups": 3}, ValueError, "num_groups"),
        ({"kernel": "gaussian"}, TypeError, "kernel"),
    ]:
        with pytest.raises(exc, match=word):
            LatentCRF(**{"channels": 4, **kwargs})
    with pytest.raises(ValueError, match="circular"):  # the kernel's own size check
        LatentCRF(channels=4, kernel=LocalKernel(radius=3, boundary="circular"))(torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize("normalization", ["batch", "mean_field"])
def test_half_precision_runs(normalization):
    crf = LatentCRF(channels=4, cond_dim=8, normalization=normalization, num_iterations=2).to(torch.bfloat16)
    x = torch.randn(2, 4, 8, 8, dtype=torch.bfloat16)
    y = crf(x, torch.randn(2, 3, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_layer_gradients_match_finite_differences():
    """The layer is plain autograd; gradcheck guards against non-differentiable pieces (Cholesky, attention)."""
    torch.manual_seed(0)
    crf = LatentCRF(channels=2, cond_dim=3, num_iterations=2, normalization="mean_field", hidden_channels=4,
                    attention_dim=4).double()
    with torch.no_grad():
        for p in crf.network.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: crf(a, b), (x, c), eps=1e-6, atol=1e-6)


def test_no_higher_order_term_is_the_layer_with_xi_ho_zero():
    """``num_filters=0`` (Table 5's ablation) equals the full layer with its FoE term scaled to zero."""
    import energycrf as ec

    torch.manual_seed(0)
    full = ec.LatentCRF(channels=3, cond_dim=6, normalization="none").double()
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.1 * torch.randn_like(p))
    bare = ec.LatentCRF(channels=3, cond_dim=6, normalization="none", num_filters=0).double()
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("field_of_experts.")}
    bare.load_state_dict(state, strict=True)
    assert bare.field_of_experts is None and bare.config["num_filters"] == 0
    full.scales["field_of_experts"] = 0.0
    x, c = torch.randn(2, 3, 6, 5, dtype=torch.float64), torch.randn(2, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(bare(x, c), full(x, c), rtol=1e-12, atol=1e-12)
    full.scales["field_of_experts"] = 1.0
    assert not torch.allclose(bare(x, c), full(x, c))  # the term did something
    with pytest.raises(ValueError, match="num_filters"):
        ec.LatentCRF(channels=3, num_filters=-1)
