"""`energycrf train-corrector` on a tiny random pipeline: outputs, the recorded plan, reproducibility."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from energycrf.apps._command import UsageError

from tests.apps.ldm.conftest import needs_text


def _args(argv):
    from energycrf.apps.ldm import corrector

    p = argparse.ArgumentParser()
    corrector.add_arguments(p)
    return p.parse_args(argv)


def _tiny_argv(out, work):
    return ["--sampler", "dpmpp", "--spacing", "trailing", "--calls", "2", "--out", str(out), "--work", str(work),
            "--images", "6", "--teacher-steps", "3", "--steps", "4", "--batch-size", "4", "--val-fraction", "0.34",
            "--no-progress"]


@needs_text
def test_train_corrector_records_plan_and_command_and_is_reproducible(tiny_pipe, tmp_path):
    from energycrf.apps.ldm import corrector
    from energycrf.integrations.bundle import load_crf
    from energycrf.integrations.plan import CorrectorPlan

    args = _args(_tiny_argv(tmp_path / "a", tmp_path / "cache"))
    rec = corrector.train(args, pipe=tiny_pipe)
    out = tmp_path / "a"
    assert {p.name for p in out.iterdir()} >= {"config.json", "diffusion_pytorch_model.safetensors", "plan.json",
                                               "training.json", "loss.csv", "loss.png"}
    crf = load_crf(out)
    assert crf.plan == CorrectorPlan("dpmpp", "trailing", 2)
    saved = json.loads((out / "training.json").read_text())
    assert saved["command"] == rec["command"] and saved["command"].startswith("energycrf train-corrector")
    assert "--calls 2" in saved["command"] and saved["final"]["train_size"] == 4 and saved["final"]["val_size"] == 2
    assert len((out / "loss.csv").read_text().splitlines()) == 1 + 4
    # the recorded command reproduces the weights, from the cache and from a fresh one
    argv = saved["command"].split()[2:]
    for work in (tmp_path / "cache", tmp_path / "fresh"):
        again = _args([*argv[: argv.index("--out") + 1], str(tmp_path / "b"), *argv[argv.index("--out") + 2 :],
                       "--no-progress"])
        again.work = str(work)
        corrector.train(again, pipe=tiny_pipe)
        b = load_crf(tmp_path / "b")
        for (k, v), (_, w) in zip(crf.state_dict().items(), b.state_dict().items()):
            torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # teacher + input, reused


@needs_text
def test_train_corrector_with_a_pixel_term(tiny_pipe, tmp_path):
    from energycrf.apps.ldm import corrector

    args = _args(_tiny_argv(tmp_path / "p", tmp_path / "cache") + ["--pixel-weight", "0.5"])
    flags = [p.requires_grad for p in tiny_pipe.vae.parameters()]
    rec = corrector.train(args, pipe=tiny_pipe)
    assert "--pixel-weight 0.5" in rec["command"] and "D the VAE decoder" in rec["loss"]
    assert rec["final"]["val_pixel_loss"] > 0
    assert [p.requires_grad for p in tiny_pipe.vae.parameters()] == flags  # the pipeline is left as it was


@pytest.mark.parametrize("bad, needle", [(["--calls", "0"], "--calls"), (["--sampler", "euler"], "--sampler"),
                                         (["--val-fraction", "1.0"], "--val-fraction"), (["--lr", "0"], "--lr"),
                                         (["--filters", "-1"], "--filters"), (["--filter-size", "4"], "--filter-size"),
                                         (["--iterations", "0"], "--iterations"), (["--hidden", "0"], "--hidden")])
def test_train_corrector_refuses_bad_options_before_work(tmp_path, bad, needle):
    from energycrf.apps.ldm import corrector

    with pytest.raises(UsageError, match=needle):  # one line naming the option, status 2 from the CLI
        corrector.run(_args(["--out", str(tmp_path / "x"), *bad]))
    assert not (tmp_path / "x").exists()


@needs_text
def test_train_corrector_ablation_knobs_reach_the_layer_and_the_record(tiny_pipe, tmp_path):
    from energycrf.apps.ldm import corrector
    from energycrf.integrations.bundle import load_crf
    from energycrf.integrations.diffusers import generate

    argv = _tiny_argv(tmp_path / "a", tmp_path / "cache") + ["--no-text", "--filters", "0", "--iterations", "2",
                                                             "--hidden", "8", "--filter-size", "5"]
    rec = corrector.train(_args(argv), pipe=tiny_pipe)
    assert rec["crf_config"] == {"channels": 4, "cond_dim": None, "normalization": "none", "num_iterations": 2,
                                 "num_filters": 0, "kernel_size": 5, "hidden_channels": 8}
    assert "--no-text" in rec["command"].split() and "--filters 0" in rec["command"]
    crf = load_crf(tmp_path / "a")
    assert crf.cond_dim is None and crf.field_of_experts is None and crf.num_iterations == 2
    # the recorded command parses back to the same options
    again = _args(rec["command"].split()[2:])
    assert again.no_text and again.filters == 0 and again.iterations == 2
    # an unconditioned corrector runs in generate() (condition "auto" gives it no text) with its plan's calls
    gens = [torch.Generator().manual_seed(0)]
    out = generate(tiny_pipe, crf, prompt=["a bag"], generator=gens, guidance_scale=2.0, output_type="latent").images
    assert out.shape[0] == 1 and torch.isfinite(out).all()


def test_train_corrector_keeps_a_finished_corrector_and_checks_the_cache_folder(tmp_path):
    from energycrf.apps.ldm import corrector

    done = tmp_path / "done"
    done.mkdir()
    (done / "training.json").write_text("{}\n")
    (tmp_path / "cache.txt").write_text("a file\n")
    new = str(tmp_path / "n")
    for argv, needle in ((["--out", str(done)], "--out: expected a folder without earlier results"),
                         (["--out", new, "--work", str(tmp_path / "cache.txt")], "--work: expected a folder"),
                         (["--out", new, "--work", new], "--work: expected a folder other")):
        with pytest.raises(UsageError, match=needle):
            corrector.run(_args(argv))
    assert (done / "training.json").read_text() == "{}\n" and not (tmp_path / "n").exists()
    assert "--overwrite" not in corrector.command_line(_args(["--out", "x", "--overwrite"]))
