"""scripts/train_denoisers_full.py (the long, resumable runs of issue 25) with tiny settings, and the
FoE energy learned through its minimiser: an interrupted run resumed ends with the same weights,
validations and logs as an uninterrupted one; greedy phases train their own stage only; a resume
with other settings is refused; the implicit gradient of the FoE denoiser matches finite differences."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from energycrf.apps.denoise import FoEEnergyDenoiser, load_denoiser

TINY = {
    "staged": ["num_stages=2", "num_filters=3", "kernel_size=3", "num_knots=9", "greedy_steps=4", "joint_steps=4",
               "batch_size=2", "patch_size=20", "margin=3", "pad=4", "checkpoint_every=2", "validate_every=4",
               "val_crop=24"],
    "foe": ["num_filters=3", "kernel_size=3", "num_iterations=300", "gtol=1e-5", "steps=4", "batch_size=2",
            "patch_size=16", "margin=2", "pad=4", "checkpoint_every=2", "validate_every=2", "val_crop=24"],
}


def _run(mod, model, run_dir, *extra):
    argv = ["--model", model, "--sigma", "25", "--run-dir", str(run_dir), "--val-images", "camera", "--no-progress",
            "--log-every", "1"]
    for item in TINY[model]:
        argv += ["--set", item]
    assert mod.main(argv + list(extra)) == 0


def _strip(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "time")} for r in records]


@pytest.mark.parametrize("model", ["staged", "foe"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, load_script, capsys, model):
    mod = load_script("scripts/train_denoisers_full.py")
    _run(mod, model, tmp_path / "a")
    _run(mod, model, tmp_path / "b", "--max-steps-now", "5" if model == "staged" else "1")
    assert not (tmp_path / "b" / "final").exists()
    capsys.readouterr()
    _run(mod, model, tmp_path / "b", "--resume", "--max-steps-now", "1")  # one step on from the checkpoint
    steps = [r for r in map(json.loads, capsys.readouterr().out.splitlines()) if "s_per_step" in r]
    assert [(r["phase"], r["step"]) for r in steps] == [("greedy-2" if model == "staged" else "train", 2)]
    _run(mod, model, tmp_path / "b", "--resume")
    wa, wb = (load_file(tmp_path / r / "final" / "model.safetensors") for r in ("a", "b"))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)
    va, vb = (mod.read_jsonl(tmp_path / r / "validation.jsonl") for r in ("a", "b"))
    assert _strip(va) == _strip(vb) and len(va) >= 2
    last = "joint" if model == "staged" else "train"
    la, lb = ([json.loads(x) for x in (tmp_path / r / last / "log.jsonl").read_text().splitlines()] for r in "ab")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    meta = json.loads((tmp_path / "b" / "run.json").read_text())
    assert ["--resume" in c["command"] for c in meta["commands"]] == [False, True, True]
    assert (tmp_path / "b" / "learning_curve.png").stat().st_size > 0
    info = json.loads((tmp_path / "b" / "final" / "denoiser.json").read_text())["info"]
    assert info["validation"]["global_step"] == (12 if model == "staged" else 4)
    den = load_denoiser(checkpoint=tmp_path / "b" / "final")  # the shipped form: float32, loads by config
    assert all(p.dtype == torch.float32 for p in den.parameters())
    x = torch.rand(1, 1, 20, 20)
    assert torch.isfinite(den(x)).all() and den(x).shape == x.shape


def test_greedy_phase_trains_its_own_stage_only(tmp_path, load_script):
    mod = load_script("scripts/train_denoisers_full.py")
    _run(mod, "staged", tmp_path / "r", "--max-steps-now", "4")
    start = mod.build("staged", 25.0, *_settings(mod)).state_dict()
    after = load_file(tmp_path / "r" / "greedy-1" / "step-0000004" / "model.safetensors")
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    assert changed and all(k.startswith("model.layer.energies.0.") for k in changed)


def _settings(mod):
    arch, recipe = dict(mod.ARCH["staged"]), dict(mod.RECIPES["staged"])
    for item in TINY["staged"]:
        key, value = item.split("=")
        (arch if key in arch else recipe)[key] = json.loads(value)
    return arch, recipe


def test_resume_with_other_settings_is_refused(tmp_path, load_script):
    mod = load_script("scripts/train_denoisers_full.py")
    _run(mod, "staged", tmp_path / "r", "--max-steps-now", "0")
    with pytest.raises(SystemExit, match="already holds a run"):
        _run(mod, "staged", tmp_path / "r")
    with pytest.raises(SystemExit, match=r"other settings \(recipe differ\)"):
        _run(mod, "staged", tmp_path / "r", "--resume", "--set", "lr=0.5")


def test_foe_implicit_gradient_matches_finite_differences():
    """The FoE energy's weights get d loss / d theta through the minimiser by implicit
    differentiation (training mode; the finite differences use the same minimiser, solved to gtol
    without a graph); eval mode minimises the energy with ec.solve and reaches the same point."""
    torch.manual_seed(0)
    den = FoEEnergyDenoiser(num_filters=2, kernel_size=3, alpha=0.3, num_iterations=2000, method="lbfgs",
                            filter_init="dct", expert_weights="learned", differentiation="implicit",
                            gtol=1e-8).double()
    with torch.no_grad():
        den.energy[1].potential.log_alpha.copy_(torch.tensor([-0.5, 0.4]))
    x, target = torch.randn(1, 1, 8, 8, dtype=torch.float64), torch.randn(1, 1, 8, 8, dtype=torch.float64)
    params = {"unary": den.energy[0].log_weight, "experts": den.energy[1].potential.log_alpha,
              "filters": den.energy[1].weight}
    den.train()
    ((den(x) - target) ** 2).sum().backward()
    for name, p in params.items():
        for i in range(min(p.numel(), 3)):
            step = 1e-4
            values = []
            for sign in (1, -1):
                with torch.no_grad():
                    p.view(-1)[i] += sign * step
                    values.append(float(((den(x) - target) ** 2).sum()))
                    p.view(-1)[i] -= sign * step
            numeric = (values[0] - values[1]) / (2 * step)
            assert float(p.grad.view(-1)[i]) == pytest.approx(numeric, rel=1e-4, abs=1e-7), (name, i)
    with torch.no_grad():  # eval is ec.solve's minimiser (it may also stop on the energy change): the same point
        den.train()
        y_train = den(x)
        den.eval()
        torch.testing.assert_close(den(x), y_train, rtol=0, atol=1e-4)


def test_benchmark_measures_an_extra_checkpoint(tmp_path, load_script):
    """benchmarks/denoising.py --extra NAME=DIR adds a run's denoiser ({sigma} filled in) to the table."""
    from energycrf.apps.denoise import PixelDenoiser, StagedFoEDenoiser

    den = PixelDenoiser(StagedFoEDenoiser(num_stages=1, num_filters=2, kernel_size=3), sigma=25, kind="staged_foe")
    den.save_pretrained(tmp_path / "sigma25")
    mod = load_script("benchmarks/denoising.py")
    out = mod.methods(25, {"tv_weight_factor": 1.0, "nlm_h_factor": 1.0}, {"mine": str(tmp_path / "sigma{sigma}")})
    x = torch.rand(16, 16).double().numpy()
    y = out["mine"](x)
    assert y.shape == x.shape
    with torch.no_grad():
        expected = den.eval()(torch.from_numpy(x).float()[None, None])[0, 0].numpy()
    assert abs(y - expected).max() < 1e-6


def test_init_starts_from_a_trained_denoiser_and_resumes_without_repeating_it(tmp_path, load_script):
    """--init DIR: the run starts from DIR's weights (another sigma's final/), records DIR by path and
    weights hash, and a --resume without --init goes on from the recorded start."""
    mod = load_script("scripts/train_denoisers_full.py")
    _run(mod, "staged", tmp_path / "a")
    fine = ["--sigma", "15", "--init", str(tmp_path / "a" / "final"), "--set", "greedy_steps=0",
            "--set", "joint_steps=2", "--set", "joint_lr=1e-12"]  # Adam moves each weight by ~lr: the start shows
    _run(mod, "staged", tmp_path / "c", *fine, "--max-steps-now", "1")
    _run(mod, "staged", tmp_path / "c", "--sigma", "15", "--set", "greedy_steps=0", "--set", "joint_steps=2",
         "--set", "joint_lr=1e-12", "--resume")
    start, end = (load_file(tmp_path / r / "final" / "model.safetensors") for r in ("a", "c"))
    dct = mod.build("staged", 15.0, *_settings(mod)).model.state_dict()
    assert start.keys() == end.keys()
    for key in start:
        torch.testing.assert_close(end[key], start[key], rtol=0, atol=1e-9, msg=key)
    assert any(not torch.allclose(start[k], dct[k].to(start[k].dtype), atol=1e-6) for k in start)
    meta = json.loads((tmp_path / "c" / "run.json").read_text())
    init = meta["settings"]["init"]
    assert init["path"] == str((tmp_path / "a" / "final").resolve()) and init["sigma"] == 25.0
    assert len(init["sha256"]) == 64
    info = json.loads((tmp_path / "c" / "final" / "denoiser.json").read_text())
    assert info["sigma"] == 15.0 and info["info"]["init"] == init
    assert [p["name"] for p in info["info"]["phases"]] == ["joint"]


def test_init_refuses_what_is_not_the_same_model(tmp_path, load_script):
    mod = load_script("scripts/train_denoisers_full.py")
    with pytest.raises(SystemExit, match="--init: expected a trained denoiser folder"):
        _run(mod, "staged", tmp_path / "r", "--init", str(tmp_path / "nothing"))
    _run(mod, "staged", tmp_path / "a")
    with pytest.raises(SystemExit, match="another architecture"):
        _run(mod, "staged", tmp_path / "b", "--init", str(tmp_path / "a" / "final"), "--set", "num_filters=4")
    with pytest.raises(SystemExit, match="expected a 'foe_energy' denoiser"):
        _run(mod, "foe", tmp_path / "c", "--init", str(tmp_path / "a" / "final"))
    _run(mod, "staged", tmp_path / "d", "--init", str(tmp_path / "a" / "final"), "--max-steps-now", "0")
    (tmp_path / "a" / "final" / "model.safetensors").write_bytes(
        (tmp_path / "a" / "final" / "model.safetensors").read_bytes())  # same bytes: still the same start
    _run(mod, "staged", tmp_path / "d", "--resume", "--max-steps-now", "0")
    from energycrf.apps.denoise import PixelDenoiser

    other = PixelDenoiser.from_pretrained(tmp_path / "a" / "final")
    with torch.no_grad():
        for w in other.parameters():
            w.add_(0.01)
    other.save_pretrained(tmp_path / "a" / "final")  # another start in the recorded folder: refused
    with pytest.raises(SystemExit, match=r"other settings \(init differ\)"):
        _run(mod, "staged", tmp_path / "d", "--resume")


def test_foe_prior_moves_to_another_sigma_by_the_map_weight(tmp_path, load_script):
    """--init of an FoE energy trained at another sigma keeps the prior (filters, expert weights)
    and multiplies the data weight w by (sigma_init / sigma)^2; with no steps the run measures
    that energy and writes it."""
    mod = load_script("scripts/train_denoisers_full.py")
    _run(mod, "foe", tmp_path / "a")
    _run(mod, "foe", tmp_path / "c", "--sigma", "50", "--init", str(tmp_path / "a" / "final"), "--set", "steps=0")
    start, moved = (load_file(tmp_path / r / "final" / "model.safetensors") for r in ("a", "c"))
    key = next(k for k in start if k.endswith("log_weight"))
    for k in start:
        if k == key:
            torch.testing.assert_close(moved[k].exp(), start[k].exp() / 4, rtol=1e-6, atol=0)
        else:
            torch.testing.assert_close(moved[k], start[k], rtol=0, atol=0, msg=k)
    meta = json.loads((tmp_path / "c" / "final" / "denoiser.json").read_text())
    assert meta["sigma"] == 50.0 and meta["info"]["init"]["unary_weight_times"] == 0.25
    assert meta["info"]["phases"] == [] and meta["info"]["validation"]["global_step"] == 0
    assert not (tmp_path / "c" / "train").exists()


def test_train_images_subset_is_recorded_and_held_out_photographs_are_refused(tmp_path, load_script):
    mod = load_script("scripts/train_denoisers_full.py")
    _run(mod, "staged", tmp_path / "r", "--train-images", "astronaut", "coffee", "--max-steps-now", "0")
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["settings"]["train_images"] == ["astronaut", "coffee"]
    with pytest.raises(SystemExit, match=r"other settings \(train_images differ\)"):
        _run(mod, "staged", tmp_path / "r", "--resume")
    with pytest.raises(SystemExit):
        _run(mod, "staged", tmp_path / "s", "--train-images", "camera")  # a held-out photograph
