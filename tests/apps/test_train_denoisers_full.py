"""scripts/train_denoisers_full.py (the long, resumable runs of issue 25) with tiny settings, and the
FoE energy learned through its minimiser: an interrupted run resumed ends with the same weights,
validations and logs as an uninterrupted one; greedy phases train their own stage only; a usage
mistake (a bad option or --set entry, a resume with other settings or another --init) is refused up
front, status 2, nothing created; the implicit gradient of the FoE denoiser matches finite
differences (scripts/denoise_runs.sh: test_denoise_runs_script.py)."""

from __future__ import annotations

import json
import pytest
import torch
from safetensors.torch import load_file

from energycrf.apps.denoise import FoEEnergyDenoiser, load_denoiser
from tests.apps.tiny_denoise_runs import TINY, run_tiny as _run  # noqa: F401


def _usage_error(capsys, call, option):
    """``call()`` is refused as a usage mistake: exit status 2 and one line naming ``option``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        call()
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"train_denoisers_full.py: error: {option}"), err
    assert "expected" in err and "got" in err, err
    return err


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


def test_resume_with_other_settings_is_refused(tmp_path, load_script, capsys):
    mod = load_script("scripts/train_denoisers_full.py")
    _run(mod, "staged", tmp_path / "r", "--max-steps-now", "0")
    err = _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "r"), "--run-dir")
    assert "which holds a run (run.json); pass --resume" in err
    err = _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "r", "--resume", "--set", "lr=0.5"), "--resume")
    assert "other settings: recipe lr=0.5 (run.json: 0.002)" in err


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


def test_init_refuses_what_is_not_the_same_model(tmp_path, load_script, capsys):
    mod = load_script("scripts/train_denoisers_full.py")
    err = _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "r", "--init", str(tmp_path / "nothing")),
                       "--init")
    assert "expected a trained denoiser folder" in err and not (tmp_path / "r").exists()
    _run(mod, "staged", tmp_path / "a")
    err = _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "b", "--init", str(tmp_path / "a" / "final"),
                                            "--set", "num_filters=4"), "--init")
    assert "another one (first difference" in err
    err = _usage_error(capsys, lambda: _run(mod, "foe", tmp_path / "c", "--init", str(tmp_path / "a" / "final")),
                       "--init")
    assert "expected a 'foe_energy' denoiser" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
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
    err = _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "d", "--resume"), "--init")
    assert "expected the weights the run in" in err and "got other weights in" in err


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


def test_train_images_subset_is_recorded_and_held_out_photographs_are_refused(tmp_path, load_script, capsys):
    mod = load_script("scripts/train_denoisers_full.py")
    _run(mod, "staged", tmp_path / "r", "--train-images", "astronaut", "coffee", "--max-steps-now", "0")
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["settings"]["train_images"] == ["astronaut", "coffee"]
    err = _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "r", "--resume"), "--resume")
    assert "other settings: train_images=" in err
    _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "s", "--train-images", "camera"),  # held out
                 "--train-images")


# --- usage mistakes: refused up front (status 2, one line naming the option), nothing created ---------------

_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
BAD = [  # (model, arguments after the tiny settings, the option the error names)
    ("staged", ["--set", "joint_steps=-5"], "--set joint_steps"),
    ("staged", ["--set", "joint_steps=abc"], "--set joint_steps"),
    ("staged", ["--set", "greedy_steps=2.5"], "--set greedy_steps"),
    ("staged", ["--set", "lr=-1"], "--set lr"),
    ("staged", ["--set", "lr=NaN"], "--set lr"),
    ("staged", ["--set", "joint_lr=nan"], "--set joint_lr"),
    ("staged", ["--set", "margin=30", "--set", "patch_size=40"], "--set patch_size"),  # no interior for the loss
    ("staged", ["--set", "margin=10"], "--set margin"),  # the tiny patches are 20 pixels
    ("staged", ["--set", "patch_size=200"], "--set patch_size"),  # 'text' is 172 pixels tall
    ("staged", ["--set", "dtype=float16"], "--set dtype"),
    ("staged", ["--set", "checkpoint_every=0"], "--set checkpoint_every"),
    ("staged", ["--set", "checkpoint_every=3"], "--set checkpoint_every"),  # validate_every=4
    ("staged", ["--set", "validate_every=3"], "--set validate_every"),  # checkpoint_every=2
    ("staged", ["--set", "num_stages=0"], "--set num_stages"),
    ("staged", ["--set", "kernel_size=4"], "--set kernel_size"),
    ("staged", ["--set", "num_filters=9"], "--set num_filters"),  # a 3x3 DCT has 8 filters
    ("staged", ["--set", "num_knots=1"], "--set num_knots"),
    ("staged", ["--set", "batch_size=0"], "--set batch_size"),
    ("staged", ["--set", "warmup=-1"], "--set warmup"),
    ("staged", ["--set", "val_crop=-1"], "--set val_crop"),
    ("staged", ["--set", "span=0"], "--set span"),
    ("staged", ["--set", "unary_weight=true"], "--set unary_weight"),
    ("staged", ["--set", "steps=3"], "--set"),  # the FoE run's key
    ("staged", ["--set", "lr"], "--set"),
    ("foe", ["--set", "steps=-1"], "--set steps"),
    ("foe", ["--set", "method=bogus"], "--set method"),
    ("foe", ["--set", "differentiation=magic"], "--set differentiation"),
    ("foe", ["--set", "gtol=0"], "--set gtol"),
    ("foe", ["--set", "num_iterations=0"], "--set num_iterations"),
    ("foe", ["--sigma", "0"], "--sigma"),  # was a ZeroDivisionError
    ("staged", ["--sigma", "0"], "--sigma"),  # trained at no noise
    ("staged", ["--sigma", "-5"], "--sigma"),
    ("staged", ["--sigma", "nan"], "--sigma"),
    ("staged", ["--val-images", "bogus"], "--val-images"),  # crashed at the first validation, after training
    ("staged", ["--val-images", "astronaut"], "--val-images"),  # a training photograph
    ("staged", ["--train-images", "camera"], "--train-images"),
    ("staged", ["--threads", "0"], "--threads"),
    ("staged", ["--seed", "-1"], "--seed"),
    ("staged", ["--max-steps-now", "-1"], "--max-steps-now"),
    ("staged", ["--device", "bogus"], "--device"),
    pytest.param("staged", ["--device", "cuda"], "--device", marks=_NO_CUDA),
    ("staged", ["--run-dir", "FILE"], "--run-dir"),
    ("staged", ["--export", "FILE"], "--export"),
    ("staged", ["--init", "MISSING"], "--init"),
]


def _paths(extra, tmp_path):
    return [str(tmp_path / "a-file") if a == "FILE" else str(tmp_path / "nothing") if a == "MISSING" else a
            for a in extra]


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("model, extra, option", BAD)
def test_a_usage_mistake_is_refused_before_anything_is_created(tmp_path, load_script, capsys, model, extra, option):
    mod = load_script("scripts/train_denoisers_full.py")
    (tmp_path / "a-file").write_text("not a folder")
    before = _tree(tmp_path)
    _usage_error(capsys, lambda: _run(mod, model, tmp_path / "r", "--max-steps-now", "0", *_paths(extra, tmp_path)),
                 option)
    assert _tree(tmp_path) == before


def test_a_usage_mistake_leaves_an_existing_run_as_it_was(tmp_path, load_script, capsys):
    mod = load_script("scripts/train_denoisers_full.py")
    _run(mod, "staged", tmp_path / "r", "--max-steps-now", "1")
    (tmp_path / "a-file").write_text("not a folder")
    before = _tree(tmp_path / "r")
    for extra, option in [(["--set", "lr=-1"], "--set lr"), (["--set", "lr=0.5"], "--resume"),
                          (["--sigma", "0"], "--sigma"), (["--val-images", "bogus"], "--val-images"),
                          (["--init", str(tmp_path / "r" / "greedy-1")], "--init"),
                          (["--export", str(tmp_path / "a-file")], "--export")]:
        _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "r", "--resume", *extra), option)
    _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "r"), "--run-dir")  # no --resume
    assert _tree(tmp_path / "r") == before


def test_every_recipe_and_architecture_key_has_a_type_and_range(load_script):
    mod = load_script("scripts/train_denoisers_full.py")
    keys = {k for table in (mod.ARCH, mod.RECIPES) for entry in table.values() for k in entry}
    assert keys <= set(mod.KEYS), keys - set(mod.KEYS)


def test_resume_needs_the_init_folder_only_before_the_first_checkpoint(tmp_path, load_script, capsys):
    """A run from --init resumes from its checkpoint after the init folder moved (or went); an
    --init given to a resume is compared by the SHA-256 of its weights, not by its path."""
    from energycrf.apps.denoise import PixelDenoiser

    mod = load_script("scripts/train_denoisers_full.py")
    den = mod.build("staged", 25.0, *_settings(mod))
    torch.manual_seed(0)
    with torch.no_grad():
        for w in den.parameters():
            w.add_(0.01 * torch.randn_like(w))  # not the DCT start
    den.save_pretrained(tmp_path / "init")
    fine = ["--sigma", "15", "--set", "greedy_steps=0", "--set", "joint_steps=4"]
    _run(mod, "staged", tmp_path / "u", *fine, "--init", str(tmp_path / "init"))  # uninterrupted
    _run(mod, "staged", tmp_path / "c", *fine, "--init", str(tmp_path / "init"), "--max-steps-now", "1")
    _run(mod, "staged", tmp_path / "n", *fine, "--init", str(tmp_path / "init"), "--max-steps-now", "0")
    (tmp_path / "init").rename(tmp_path / "moved")
    _run(mod, "staged", tmp_path / "c", *fine, "--resume", "--max-steps-now", "1")  # its checkpoint is the start
    other = PixelDenoiser.from_pretrained(tmp_path / "moved")
    with torch.no_grad():
        for w in other.parameters():
            w.add_(0.01)
    other.save_pretrained(tmp_path / "other")
    err = _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "c", *fine, "--resume", "--init",
                                            str(tmp_path / "other")), "--init")
    assert "expected the weights the run in" in err and "got other weights in" in err
    err = _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "n", *fine, "--resume"), "--init")
    assert "which has no checkpoint yet" in err and "is gone" in err
    _run(mod, "staged", tmp_path / "n", *fine, "--resume", "--init", str(tmp_path / "moved"), "--max-steps-now", "0")
    _run(mod, "staged", tmp_path / "c", *fine, "--resume", "--init", str(tmp_path / "moved"))  # same weights, moved
    wu, wc = (load_file(tmp_path / r / "final" / "model.safetensors") for r in ("u", "c"))
    for key in wu:
        torch.testing.assert_close(wc[key], wu[key], rtol=0, atol=0, msg=key)
    init_u, init_c = (json.loads((tmp_path / r / "run.json").read_text())["settings"]["init"] for r in ("u", "c"))
    assert init_c == {**init_u, "path": str((tmp_path / "moved").resolve())}


def test_a_phase_of_no_steps_is_left_out(tmp_path, load_script):
    mod = load_script("scripts/train_denoisers_full.py")
    _run(mod, "staged", tmp_path / "r", "--set", "joint_steps=0")  # the greedy phases only
    info = json.loads((tmp_path / "r" / "final" / "denoiser.json").read_text())["info"]
    assert [p["name"] for p in info["phases"]] == ["greedy-1", "greedy-2"] and not (tmp_path / "r" / "joint").exists()


def test_resume_with_the_same_command_after_the_init_folder_went(tmp_path, load_script, capsys):
    """The command that started a fine-tune resumes it, its --init folder gone, once the run has a
    checkpoint (nothing is loaded from it); without a checkpoint, or at another path that does not
    exist, --init is refused."""
    mod = load_script("scripts/train_denoisers_full.py")
    mod.build("staged", 25.0, *_settings(mod)).save_pretrained(tmp_path / "init25")
    same = ["--sigma", "15", "--init", str(tmp_path / "init25"), "--set", "greedy_steps=0", "--set", "joint_steps=4"]
    _run(mod, "staged", tmp_path / "c", *same, "--max-steps-now", "2")
    _run(mod, "staged", tmp_path / "n", *same, "--max-steps-now", "0")
    recorded = json.loads((tmp_path / "c" / "run.json").read_text())["settings"]["init"]
    (tmp_path / "init25").rename(tmp_path / "moved")
    err = _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "n", *same, "--resume"), "--init")
    assert "expected a trained denoiser folder" in err  # no checkpoint: the start is needed
    elsewhere = [a if a != str(tmp_path / "init25") else str(tmp_path / "elsewhere") for a in same]
    err = _usage_error(capsys, lambda: _run(mod, "staged", tmp_path / "c", *elsewhere, "--resume"), "--init")
    assert "expected a trained denoiser folder" in err and "elsewhere" in err
    _run(mod, "staged", tmp_path / "c", *same, "--resume")
    assert (tmp_path / "c" / "final").is_dir()
    assert json.loads((tmp_path / "c" / "run.json").read_text())["settings"]["init"] == recorded
