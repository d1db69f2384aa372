"""Batches (per-sample convergence), dtypes, the registry and its errors, compare_solvers and the CLI."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from solver_problems import F64, convex_energy, exact_quadratic_minimiser, quadratic_energy

import energycrf as ec
from energycrf.solvers import SOLVERS, method_names

PER_SAMPLE = ["coordinate_descent", "mean_field", "gradient_descent", "lbfgs", "conjugate_gradient"]


def all_accepted(out) -> bool:
    """Every sample's step accepted: ``accepted`` is None (all) or a mask (a tensor or host array)."""
    return out.accepted is None or bool(np.asarray(out.accepted).all())


def _x(B=2, C=2, H=6, W=6, seed=0, dtype=F64):
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("method", PER_SAMPLE)
def test_each_sample_converges_on_its_own(method):
    E = quadratic_energy(2, strength=2.0)
    x = _x(B=3)
    y0 = x.clone()
    y0[1] = exact_quadratic_minimiser(E, x[1:2])[0]  # sample 1 starts at its minimiser
    res = ec.solve(E, x, method=method, y0=y0, max_iters=500, tol=1e-13)
    assert res.status == ["converged"] * 3, res.summary()
    assert int(res.iterations[1]) == 1 < int(res.iterations[0])
    assert res.energies.shape == (res.num_iterations + 1, 3) and res.grad_norms.shape == res.energies.shape
    assert bool((res.energies[1:, 1] == res.energies[1, 1]).all())  # frozen once converged
    torch.testing.assert_close(res.y[1], y0[1], rtol=1e-9, atol=1e-9)
    assert bool((res.times[1:] >= res.times[:-1]).all()) and res.wall_time >= float(res.times[-1])


@pytest.mark.parametrize("method", PER_SAMPLE[:4])
def test_a_batch_is_the_samples_solved_one_by_one(method):
    E = convex_energy(2)
    x = _x(B=2, seed=4)
    kw = dict(method=method, max_iters=4, tol=0.0, gtol=0.0)
    batch = ec.solve(E, x, **kw)
    for b in range(2):
        single = ec.solve(E, x[b : b + 1], **kw)
        torch.testing.assert_close(batch.y[b : b + 1], single.y, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(batch.energies[:, b], single.energies[:, 0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", [m for m in method_names() if m != "sequential"])
def test_float32_solves_to_float32_accuracy(method):
    E64 = quadratic_energy(2, strength=1.0, boundary="circular", seed=2)
    x64 = _x(seed=2)
    y_star = exact_quadratic_minimiser(E64, x64)
    E32 = quadratic_energy(2, strength=1.0, boundary="circular", seed=2, dtype=torch.float32)
    res = ec.solve(E32, x64.float(), method=method, max_iters=500)
    assert res.y.dtype == torch.float32 and res.energies.dtype == torch.float32
    assert all(s == "converged" for s in res.status), res.summary()
    torch.testing.assert_close(res.y.double(), y_star, rtol=0, atol=2e-3)


def test_unknown_method_lists_the_valid_names():
    E = quadratic_energy(2)
    with pytest.raises(ValueError, match="coordinate_descent.*mean_field.*lbfgs") as err:
        ec.solve(E, _x(), method="newton")
    assert "newton" in str(err.value) and "fft" in str(err.value)
    assert set(method_names()) == set(SOLVERS) >= {
        "coordinate_descent", "sequential", "mean_field", "gradient_descent", "lbfgs", "scipy_lbfgs",
        "torch_lbfgs", "conjugate_gradient", "fft"}


def test_bad_arguments_name_themselves():
    E = quadratic_energy(2)
    x = _x()
    with pytest.raises(TypeError, match="damping"):
        ec.solve(E, x, method="lbfgs", damping=0.5)
    with pytest.raises(ValueError, match="damping"):
        ec.solve(E, x, method="mean_field", damping=1.5)
    with pytest.raises(ValueError, match="x"):
        ec.solve(E, x[0], method="mean_field")
    with pytest.raises(ValueError, match="y0"):
        ec.solve(E, x, method="mean_field", y0=x[:1])
    with pytest.raises(ValueError, match="on_diverge"):
        ec.solve(E, x, method="mean_field", on_diverge="explode")
    with pytest.raises(ValueError, match="order"):
        ec.solve(E, x, method="coordinate_descent", order="random")
    with pytest.raises(ValueError, match="max_iters"):
        ec.solve(E, x, method="mean_field", max_iters=-1)


def test_methods_that_do_not_apply_say_what_to_use():
    E = convex_energy(2)
    x = _x()
    with pytest.raises(ValueError, match="quadratic.*lbfgs"):
        ec.solve(E, x, method="conjugate_gradient")
    with pytest.raises(ValueError, match="quadratic"):
        ec.solve(E, x, method="fft")
    with pytest.raises(ValueError, match="circular.*conjugate_gradient"):
        ec.solve(quadratic_energy(2, boundary="zeros"), x, method="fft")


def test_progress_bar_and_callback():
    E = quadratic_energy(2)
    seen = []
    res = ec.solve(E, _x(), method="mean_field", progress=True, callback=lambda t, y, e: seen.append((t, e.clone())))
    assert [t for t, _ in seen] == list(range(1, res.num_iterations + 1))
    torch.testing.assert_close(seen[-1][1], res.energies[-1])


def test_compare_solvers_table_and_figure(tmp_path):
    E = convex_energy(1)
    x = _x(B=2, C=1, H=8, W=8)
    png = tmp_path / "gap.png"
    comp = ec.compare_solvers(E, x, methods=["coordinate_descent", "mean_field", "lbfgs", "scipy_lbfgs", "fft"],
                              max_iters=200, tol=1e-14, figure=png)
    names = [r.method for r in comp.rows]
    assert names == ["coordinate_descent", "mean_field", "lbfgs", "scipy_lbfgs", "fft"]
    assert "fft" in comp.skipped and comp.rows[-1].status.startswith("skipped")
    ran = comp.rows[:-1]
    assert min(r.gap for r in ran) == 0.0 and all(0 <= r.gap < 1e-9 for r in ran)
    best = min(float(r.energies.sum(1).min()) for r in comp.results.values())
    assert comp.best_energy == pytest.approx(best, rel=0, abs=0)
    for r in ran:
        assert r.iterations_to_gap is not None and r.seconds_to_gap <= r.seconds + 1e-9
    md = comp.to_markdown()
    assert md.startswith("| method | final energy | gap to best") and md.count("\n") == 2 + len(comp.rows)
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_solvers_compares_variants_of_one_method():
    """``"name:key=value:..."`` runs the method with those options under that label: the rows
    equal direct solves with the same options; values are typed; bad specs are refused."""
    E = convex_energy(1)
    x = _x(B=2, C=1, H=10, W=9)
    methods = ["lbfgs:precondition=fft:refine=0", "lbfgs:precondition=chebyshev:degree=3", "mean_field:adaptive=true",
               "lbfgs"]
    comp = ec.compare_solvers(E, x, methods=methods, y0="quadratic", max_iters={"lbfgs": 4, "mean_field:adaptive=true": 3},
                              options={"lbfgs": {"history": 3}}, warmup=False)
    assert [r.method for r in comp.rows] == methods
    direct = {
        methods[0]: dict(method="lbfgs", precondition="fft", refine=0, history=3, max_iters=4),
        methods[1]: dict(method="lbfgs", precondition="chebyshev", degree=3, history=3, max_iters=4),
        methods[2]: dict(method="mean_field", adaptive=True, max_iters=3),
        methods[3]: dict(method="lbfgs", history=3, max_iters=4),
    }
    for label, kwargs in direct.items():
        res = ec.solve(E, x, y0="quadratic", on_diverge="ignore", **kwargs)
        torch.testing.assert_close(comp.results[label].energies, res.energies)
        assert comp.results[label].evaluations == res.evaluations
    assert ec.solvers.compare.parse_method("mean_field:damping=0.5:adaptive=False:x=none:name=a b") == (
        "mean_field", {"damping": 0.5, "adaptive": False, "x": None, "name": "a b"})
    for bad in ("lbfgs:precondition", "lbfgs:=fft", "lbfgs:precondition="):
        with pytest.raises(ValueError, match="methods: expected 'name' or 'name:key=value:...'"):
            ec.compare_solvers(E, x, methods=[bad])
    with pytest.raises(ValueError, match=r"methods: unknown \['lbfgz:refine=0'\]"):
        ec.compare_solvers(E, x, methods=["lbfgz:refine=0"])
    with pytest.raises(ValueError, match="each label once"):
        ec.compare_solvers(E, x, methods=["lbfgs", "lbfgs"])
    with pytest.raises(ValueError, match="option 'degree' given twice"):
        ec.compare_solvers(E, x, methods=["lbfgs:precondition=chebyshev:degree=3:degree=4"])
    # a bad value is the caller's error, raised, not a "skipped" row
    with pytest.raises(ValueError, match="precondition: expected one of"):
        ec.compare_solvers(E, x, methods=["mean_field", "lbfgs:precondition=chebychev"])
    with pytest.raises(ValueError, match="degree: expected None"):
        ec.compare_solvers(E, x, methods=["mean_field", "lbfgs:precondition=chebyshev:degree=0"])
    comp = ec.compare_solvers(E, x, methods=["lbfgs:precondition=none"], max_iters=2)
    assert comp.results["lbfgs:precondition=none"].evaluations.get("quadratic_hvp", 0) == 0
    with pytest.raises(TypeError, match=r"method .lbfgs. has no option\(s\) \[.refines.\]"):
        ec.compare_solvers(E, x, methods=["lbfgs:refines=1"])
    with pytest.raises(TypeError, match="methods: expected method names"):
        ec.compare_solvers(E, x, methods=[("lbfgs", {})])


def _cli(argv):
    from energycrf.apps import compare_solvers as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_cli_compare_solvers_on_a_photograph(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = _cli(["--size", "24", "--max-iters", "30", "--methods", "mean_field,lbfgs,scipy_lbfgs", "--out-dir", str(out)])
    assert rc == 0
    table = (out / "table.md").read_text()
    assert "camera 24x24" in table and "| lbfgs |" in table and "| scipy_lbfgs |" in table
    assert (out / "gap.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out
    assert "times after one untimed iteration of each method" in table
    # the same folder again: its files are replaced only with --overwrite (tests/test_cli_outputs.py)
    assert _cli(["--size", "16", "--max-iters", "3", "--methods", "lbfgs", "--no-warmup", "--out-dir", str(out),
                 "--overwrite"]) == 0
    assert "times without an untimed warm-up iteration" in (out / "table.md").read_text()
    assert _cli(["--size", "16", "--max-iters", "3", "--methods", "lbfgs:precondition=fft,lbfgs:precondition=chebyshev",
                 "--start", "quadratic", "--out-dir", str(out), "--overwrite"]) == 0
    table = (out / "table.md").read_text()
    assert "| lbfgs:precondition=fft |" in table and "| lbfgs:precondition=chebyshev |" in table


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_cli_compare_solvers_on_a_saved_latent(tmp_path, suffix):
    z = _x(B=1, C=4, H=8, W=8, dtype=torch.float32)
    path = tmp_path / f"z{suffix}"
    if suffix == ".npy":
        np.save(path, z.numpy())
    else:
        from safetensors.torch import save_file

        save_file({"latent": z}, str(path))
    out = tmp_path / "cmp"
    assert _cli(["--latent", str(path), "--max-iters", "20", "--methods", "mean_field,lbfgs", "--out-dir", str(out)]) == 0
    assert "(1, 4, 8, 8)" in (out / "table.md").read_text()


def test_cli_subcommand_is_registered(tmp_path):
    from energycrf.cli import main

    out = tmp_path / "cmp"
    assert main(["compare-solvers", "--size", "16", "--max-iters", "5", "--methods", "mean_field",
                 "--out-dir", str(out)]) == 0
    assert (out / "table.md").is_file() and (out / "gap.png").is_file()


def test_cli_rejects_unknown_latent_format(tmp_path):
    bad = tmp_path / "z.pt"
    bad.write_bytes(b"not a tensor")
    with pytest.raises(ValueError, match="safetensors or .npy"):
        _cli(["--latent", str(bad), "--out-dir", str(tmp_path)])


def test_problem_curvature_caches_only_the_quadratic_terms():
    from energycrf.solvers import Problem

    E = convex_energy(2)  # Unary + Pairwise (cached) + Charbonnier FoE (depends on y)
    x = _x(seed=6)
    prob = Problem(E, x)
    for y in (x, x + 0.7 * _x(seed=7), x - 2.0):
        torch.testing.assert_close(prob.curvature(y), E.curvature(y, x), rtol=1e-12, atol=1e-12)
    assert prob._curv_quadratic is not None


class _Quartic(ec.Energy):
    def energy(self, y, x, c=None):
        return ((y - x) ** 4).sum((1, 2, 3))


@pytest.mark.parametrize("method", ["gradient_descent", "lbfgs"])
def test_line_search_returns_the_gradient_at_the_accepted_point_per_sample(method):
    """A batch whose first sample accepts the first trial and whose second backtracks: the step
    keeps the fused trial's gradient for the first, evaluates one gradient for the second only,
    and both equal grad E at the accepted points."""
    from energycrf.solvers.api import get_solver
    from energycrf.solvers.base import Problem

    E = (ec.energies.Unary(weight=0.1) + _Quartic()).double()
    x = torch.zeros(2, 1, 4, 4, dtype=F64)
    y = torch.stack([torch.full((1, 4, 4), 0.01), torch.full((1, 4, 4), 3.0)]).to(F64)
    solver = get_solver(method, **({"step_size": 1.0} if method == "gradient_descent" else {"precondition": "none"}))
    problem = Problem(E, x)
    e, g = problem.energy_and_grad(y)
    state = solver.init_state(problem, y, e, g)
    if method == "lbfgs":  # a unit first step: small for sample 0, far past the minimum for sample 1
        state.gamma = torch.ones(2, dtype=F64)
    before = dict(problem.counts)
    out = solver.step(problem, y, e, g, state)
    assert problem.counts["grad"] - before["grad"] == 1  # one gradient, for the late sample only
    assert all_accepted(out)
    torch.testing.assert_close(out.grad, E.grad(out.y, x), rtol=1e-12, atol=1e-12)
    assert not torch.equal(out.y[1], y[1]) and bool((out.energy < e).all())


def test_gradient_descent_fuses_the_first_trial_only_after_a_passing_one():
    """After a line search that backtracked (a grown step usually does again), gradient descent
    tries energies alone and takes one gradient at the accepted point, instead of a fused
    trial whose gradient is thrown away. Same iterates; at most one gradient per iteration plus
    one lost per return to fused trials (the old code lost one on every backtracking iteration:
    62 gradient-carrying evaluations for 33 iterations here, against 38 now)."""
    from energycrf.solvers.api import get_solver
    from energycrf.solvers.base import Problem

    E = convex_energy(2)
    x = torch.randn(2, 2, 12, 10, generator=torch.Generator().manual_seed(0), dtype=F64)
    res = ec.solve(E, x, method="gradient_descent", max_iters=40, tol=0.0, gtol=0.0)
    n = int(res.iterations.max())
    counts = res.evaluations
    assert counts["energy"] > n  # it did backtrack: the case this is about
    assert counts["grad"] + counts["energy_and_grad"] <= 1.25 * (n + 1)
    # one step after a backtracking one: energy-only trials, one gradient, the right gradient
    solver, problem = get_solver("gradient_descent"), Problem(E, x)
    y = x.clone()
    e, g = problem.energy_and_grad(y)
    state = solver.init_state(problem, y, e, g)
    state.fused = False
    before = dict(problem.counts)
    out = solver.step(problem, y, e, g, state)
    assert problem.counts["energy_and_grad"] == before["energy_and_grad"]
    assert problem.counts["grad"] - before["grad"] == 1
    torch.testing.assert_close(out.grad, E.grad(out.y, x), rtol=1e-12, atol=1e-12)
    assert bool((out.energy < e).all())


def test_adaptive_mean_field_keeps_the_old_point_and_gradient_of_a_rejected_sample():
    """One adaptive mean-field step on a batch where sample 0's Jacobi step lowers the energy
    (an oscillating error, which the site-wise step undershoots) and sample 1's raises it (a
    constant error, which it overshoots 3x on BoxSmooth): sample 1 keeps y, E and grad E, its
    damping backs off; sample 0 moves, with grad E at its new point."""
    from energycrf.solvers.api import get_solver
    from energycrf.solvers.base import Problem
    from solver_problems import BoxSmooth

    E = (ec.energies.Unary(weight=0.1) + BoxSmooth(1.0)).double()
    x = torch.randn(2, 1, 5, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    y_star = exact_quadratic_minimiser(E, x)
    oscillating = torch.ones(1, 5, 6, dtype=F64)
    oscillating[..., 1::2] = -1
    y = torch.stack([y_star[0] + oscillating, y_star[1] + 1.0])
    solver, problem = get_solver("mean_field", adaptive=True), Problem(E, x)
    e, g = problem.energy_and_grad(y)
    state = solver.init_state(problem, y, e, g)
    out = solver.step(problem, y, e, g, state)
    assert out.accepted.tolist() == [True, False]
    assert torch.equal(out.y[1], y[1]) and torch.equal(out.grad[1], g[1]) and float(out.energy[1]) == float(e[1])
    assert not torch.equal(out.y[0], y[0]) and float(out.energy[0]) < float(e[0])
    torch.testing.assert_close(out.grad, E.grad(out.y, x), rtol=1e-12, atol=1e-12)
    assert state.lam.tolist() == [1.0, 0.5]


@pytest.mark.parametrize("warmup", [True, False])
def test_compare_solvers_warms_each_method_up_untimed(monkeypatch, warmup):
    """With ``warmup`` each method first runs one iteration without a progress bar, and the
    table is built from the second, full run; without it, one run."""
    from energycrf.solvers import compare
    from energycrf.solvers.api import get_solver

    calls = []

    def recording(name, **options):
        solver = get_solver(name, **options)
        solve = solver.solve

        def wrapped(*args, **kwargs):
            res = solve(*args, **kwargs)
            calls.append((name, kwargs["max_iters"], kwargs.get("progress", False), res, id(solver)))
            return res

        solver.solve = wrapped
        return solver

    monkeypatch.setattr(compare, "get_solver", recording)
    comp = ec.compare_solvers(convex_energy(1), _x(B=1, C=1, H=6, W=6), methods=["mean_field", "lbfgs"],
                              max_iters=7, tol=0.0, gtol=0.0, progress=True, warmup=warmup)
    expected = [("mean_field", 1, False), ("mean_field", 7, True), ("lbfgs", 1, False), ("lbfgs", 7, True)]
    if not warmup:
        expected = expected[1::2]
    assert [c[:3] for c in calls] == expected
    timed = {name: res for name, budget, _, res, _ in calls if budget == 7}
    if warmup:  # the warm-up runs on a solver object of its own
        assert calls[0][4] != calls[1][4] and calls[2][4] != calls[3][4]
    assert all(comp.results[m] is timed[m] for m in ("mean_field", "lbfgs"))
    assert all(r.iterations == 7 for r in comp.rows)


def test_torch_lbfgs_pays_torch_optims_first_use_when_made_not_when_solving(monkeypatch):
    """torch.optim's first optimiser imports torch._dynamo (about 0.9 s): making the solver makes
    a throwaway one, so a solve's times start after it. The solve makes its own as before."""
    from energycrf.solvers.lbfgs import TorchLBFGS

    made = []
    real = torch.optim.LBFGS

    def counting(params, **kwargs):
        made.append(kwargs)
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "LBFGS", counting)
    solver = TorchLBFGS()
    assert len(made) == 1
    res = solver.solve(quadratic_energy(1), _x(B=1, C=1, H=6, W=6), max_iters=3)
    assert len(made) == 2 and made[1]["max_iter"] == 1 and res.num_iterations >= 1


@pytest.mark.parametrize("precondition", ["chebyshev", "fft", "blocks"])
def test_the_host_scalars_a_step_hands_the_driver_are_those_of_its_point(precondition):
    """L-BFGS hands the driver its accepted unit step's energy, gradient norm and max |y|
    (``StepOutput.host``): they equal those of the returned point, and the result's histories
    equal those of every iterate (``callback``), computed here independently."""
    from energycrf.solvers.api import get_solver
    from energycrf.solvers.base import Problem

    E = convex_energy(channels=2)
    x = _x(B=3, C=2, H=7, W=6, seed=5)
    solver = get_solver("lbfgs", precondition=precondition)
    problem = Problem(E, x)
    y = x + 0.3
    e, g = problem.energy_and_grad(y)
    out = solver.step(problem, y, e, g, solver.init_state(problem, y, e, g))
    assert out.host is not None  # the unit step was accepted for every sample
    expected = torch.stack([E(out.y, x), E.grad(out.y, x).flatten(1).norm(dim=1), out.y.flatten(1).abs().amax(1)])
    np.testing.assert_allclose(out.host, expected.detach().numpy(), rtol=1e-12, atol=1e-12)

    iterates = [x.clone()]
    res = ec.solve(E, x, method="lbfgs", precondition=precondition, max_iters=4, tol=0.0, gtol=0.0,
                   callback=lambda t, y, e: iterates.append(y.clone()))
    norms = torch.stack([E.grad(yt, x).flatten(1).norm(dim=1) for yt in iterates])
    torch.testing.assert_close(res.grad_norms, norms, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.energies, torch.stack([E(yt, x) for yt in iterates]), rtol=1e-12, atol=1e-12)
