"""``energycrf train`` on a tiny random Stable Diffusion pipeline: stage 1 on images and on latents,
stage 2 on ``energycrf distill-data`` shards, the outputs, exact resume, refusals, two processes."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from energycrf.learned.pretrained import WEIGHTS_NAME

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from energycrf import cli  # noqa: E402
from energycrf.apps import train_options  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ["--iterations", "1", "--filters", "2", "--hidden-channels", "4", "--attention-dim", "4", "--disc-channels",
        "4,4,4", "--threads", "1", "--no-progress", "--log-every", "1"]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))


def _energycrf(*argv, cwd, launcher=()) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *launcher, "-m", "energycrf", *argv], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny SD pipeline, 6 images with captions of each kind, a latents folder and distill-data shards."""
    from PIL import Image

    from energycrf.testing.tiny_pipelines import tiny_sd_pipeline

    root = tmp_path_factory.mktemp("train")
    pipe = tiny_sd_pipeline(root / "pipe")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w, mode) in enumerate([(16, 16, "RGB"), (16, 32, "RGB"), (24, 20, "L"), (40, 40, "RGBA"),
                                      (17, 23, "RGB"), (16, 16, "P")]):
        a = (rng.random((h, w, 4)) * 255).astype(np.uint8)
        Image.fromarray(a, "RGBA").convert(mode).save(images / f"im{i}.png")
    (images / "im0.txt").write_text("a red  cube\n")
    (images / "metadata.jsonl").write_text('{"file_name": "im1.png", "text": "the sea"}\n')
    latents = root / "latents"
    latents.mkdir()
    from safetensors.torch import save_file

    save_file({"latents": torch.randn(3, 4, 8, 8)}, str(latents / "a.safetensors"))
    save_file({"latents": torch.randn(4, 8, 8), "prompt_embeds": torch.randn(16, 32)}, str(latents / "b.safetensors"))
    (latents / "a.txt").write_text("noise\n")
    (root / "prompts.txt").write_text("a red cube\nthe sea\na cat\na dog\nthe sky\n")
    assert cli.main(["distill-data", "--pipeline", str(root / "pipe"), "--prompts", str(root / "prompts.txt"),
                     "--out", str(root / "shards"), "--pre-run", "35", "--post-run", "1", "--shard-size", "3",
                     "--guidance-scale", "2", "--no-progress"]) == 0
    return {"root": root, "pipe": pipe, "pipeline": root / "pipe", "images": images, "latents": latents,
            "shards": root / "shards"}


def _log(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in
            (out / "log.jsonl").read_text().splitlines()]


def test_stages_1_and_2_on_images_and_shards(work):
    from PIL import Image

    from energycrf.integrations.bundle import load_crf
    from energycrf.integrations.plan import SplicePlan
    from energycrf.learned.latent_crf import LatentCRF

    out = work["root"] / "crf12"
    proc = _energycrf("train", "--stage", "1,2", "--pipeline", "pipe", "--images", "images", "--shards", "shards",
                      "--out", out.name, "--steps", "4,3", "--batch-size", "2", "--checkpoint-every", "2", *TINY,
                      cwd=work["root"])
    assert "the shards' plan" in proc.stdout and "6 images cut to 16x16" in proc.stdout
    crf = LatentCRF.from_pretrained(out)
    assert (crf.channels, crf.cond_dim, crf.num_iterations) == (4, 32, 1)
    assert load_crf(out).plan == SplicePlan(pre_run=35, post_run=1)  # the shards' plan, recorded
    log = _log(out)
    assert [(r["stage"], r["step"]) for r in log] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3)]
    assert all({"loss_main", "loss_adv", "loss_disc"} <= set(r) for r in log[:4])  # eqs. 13-14
    assert all("loss_adv" not in r and np.isfinite(r["loss"]) for r in log[4:])  # L_DT
    with Image.open(out / "loss.png") as im:
        assert im.format == "PNG" and im.width > 300
    rec = json.loads((out / "training.json").read_text())
    assert rec["stages"]["2"]["init"] == "stage 1's final checkpoint"
    assert rec["stages"]["1"]["data"]["captions"] == {"NAME.txt": 1, "metadata.jsonl": 1, "--caption": 4}
    assert rec["timesteps"]["splice"] == 101 and rec["stages"]["2"]["data"]["samples"] == 5
    # the recorded command parses back to the same run
    parser = argparse.ArgumentParser()
    train_options.add_arguments(parser)
    argv = shlex.split(rec["command"])[2:]
    assert train_options.command_line(parser.parse_args(argv)) == rec["command"]
    assert "--stop-after" not in rec["command"] and "--threads" not in rec["command"]
    # stage 1's data: the VAE's scaled posterior means of the prepared images, and the captions' token states
    cache = _cache(out)
    from energycrf.apps.train_data import load_image

    x = load_image(work["images"] / "im3.png", (16, 16), 3)[None]
    pipe = work["pipe"]
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    torch.testing.assert_close(cache["z"][3:4], z, rtol=1e-5, atol=1e-5)
    assert cache["cond_index"].tolist()[2:] == [cache["cond_index"][2].item()] * 4  # the default caption, once
    torch.testing.assert_close(cache["conds"][cache["cond_index"][0]], _pipeline_condition(pipe, "a red cube"))


def _cache(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "work" / "stage1-latents.safetensors"))


def _pipeline_condition(pipe, prompt: str) -> torch.Tensor:
    """The positive prompt embeddings the pipeline itself hands a step-end callback (what generate gives the CRF)."""
    seen = {}

    def grab(p, i, t, kw):
        seen.setdefault("c", kw["prompt_embeds"].chunk(2)[1][0].clone())
        return kw

    pipe(prompt, num_inference_steps=1, guidance_scale=3.0, output_type="latent", callback_on_step_end=grab,
         callback_on_step_end_tensor_inputs=["prompt_embeds"])
    return seen["c"]


def test_stage_1_on_a_latents_folder(work):
    from energycrf.learned.latent_crf import LatentCRF

    out = work["root"] / "crf-latents"  # in this process (the subprocess path is the test above)
    assert cli.main(["train", "--stage", "1", "--pipeline", str(work["pipeline"]), "--latents", str(work["latents"]),
                     "--out", str(out), "--steps", "2", "--batch-size", "2", "--adv-weight", "0", "--normalization",
                     "batch", *TINY]) == 0
    assert LatentCRF.from_pretrained(out).normalization == "batch"
    from safetensors.torch import load_file

    cache, a, b = (_cache(out), load_file(str(work["latents"] / "a.safetensors")),
                   load_file(str(work["latents"] / "b.safetensors")))
    torch.testing.assert_close(cache["z"], torch.cat([a["latents"], b["latents"][None]]), rtol=0, atol=0)
    conds = cache["conds"][cache["cond_index"]]
    torch.testing.assert_close(conds[3], b["prompt_embeds"], rtol=0, atol=0)  # its own embeddings
    torch.testing.assert_close(conds[0], _pipeline_condition(work["pipe"], "noise"))  # its caption's
    assert [set(r) & {"loss_adv", "loss_disc"} for r in _log(out)] == [set(), set()]  # --adv-weight 0: L_NT alone
    assert json.loads((out / "training.json").read_text())["stages"]["1"]["discriminator"] is None


def test_stage_2_alone_from_init_and_generate_uses_the_plan(work):
    from energycrf.integrations.bundle import load_crf
    from energycrf.integrations.diffusers import generate
    from energycrf.learned.latent_crf import LatentCRF

    init = work["root"] / "init"
    torch.manual_seed(3)
    LatentCRF(channels=4, cond_dim=32, num_iterations=1, num_filters=2, hidden_channels=4, attention_dim=4,
              normalization="none").save_pretrained(init)
    out = work["root"] / "crf2"
    assert cli.main(["train", "--stage", "2", "--pipeline", str(work["pipeline"]), "--shards", str(work["shards"]),
                     "--init", str(init), "--out", str(out), "--steps", "3", "--batch-size", "2",
                     "--threads", "1", "--no-progress"]) == 0
    crf, start = load_crf(out), LatentCRF.from_pretrained(init)
    assert crf.num_iterations == 1 and any(not torch.equal(v, start.state_dict()[k])
                                           for k, v in crf.state_dict().items())  # trained from init
    rec = json.loads((out / "training.json").read_text())
    assert rec["stages"]["2"]["init"] == os.fspath(init.resolve()) and "--init" in rec["command"]
    calls = []
    crf.register_forward_hook(lambda m, args, y: calls.append(args[0].shape))
    z = generate(work["pipe"], crf, prompt="a cat", guidance_scale=2.0, output_type="latent",
                 generator=torch.Generator().manual_seed(0)).images
    assert z.shape == (1, 4, 8, 8) and calls == [(1, 4, 8, 8)]  # the recorded plan: one CRF call


def test_a_signal_in_the_last_step_of_stage_1_stops_before_stage_2(work, capsys, monkeypatch):
    """SIGTERM during stage 1's last step: that step and its checkpoint complete, then the run stops
    (status 130) instead of losing the request and training stage 2."""
    import signal

    from energycrf.training.trainer import Trainer

    real = Trainer.train_step

    def train_step(self, *args, **kw):
        if self.config.stage == 1 and self.step == 3:  # the 4th and last step of stage 1
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kw)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    out = work["root"] / "signalled"
    assert cli.main(["train", "--stage", "1,2", "--pipeline", str(work["pipeline"]), "--images", str(work["images"]),
                     "--shards", str(work["shards"]), "--out", str(out), "--steps", "4,3", "--batch-size", "2",
                     *TINY]) == 130
    assert "interrupted at step 4 of 4 of stage 1" in capsys.readouterr().out
    assert not (out / "checkpoints" / "stage2").exists() and not (out / "training.json").exists()


def test_an_interrupted_run_resumed_equals_the_uninterrupted_run(work, capsys):
    from safetensors.torch import load_file

    def run(out, *extra):
        return cli.main(["train", "--stage", "1,2", "--pipeline", str(work["pipeline"]), "--images",
                         str(work["images"]), "--shards", str(work["shards"]), "--out", str(out), "--steps", "4,3",
                         "--batch-size", "2", "--checkpoint-every", "3", *TINY, *extra])

    whole, parts = work["root"] / "whole", work["root"] / "parts"
    assert run(whole) == 0
    assert run(parts, "--stop-after", "3") == 0  # in stage 1
    assert "stopped after 3 steps (--stop-after) at step 3 of 4 of stage 1" in capsys.readouterr().out
    assert not (parts / "training.json").exists() and len(_log(parts)) == 3
    assert run(parts, "--resume", "--stop-after", "2") == 0  # across the stages
    said = capsys.readouterr().out
    assert "resuming from step 3 of stage 1" in said and "at step 1 of 3 of stage 2" in said
    assert run(parts, "--resume") == 0
    said = capsys.readouterr().out
    assert "resuming from step 1 of stage 2" in said and "resuming from step 4 of stage 1" not in said
    a, b = load_file(str(whole / WEIGHTS_NAME)), load_file(str(parts / WEIGHTS_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert _log(whole) == _log(parts)
    record = (parts / "training.json").read_bytes()
    assert run(parts, "--resume") == 0
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and "is finished" in said[0] and f"the CRF is in {parts}" in said[0], said
    with pytest.raises(SystemExit) as exit_info:  # no earlier run: refused, not a silent fresh start
        run(work["root"] / "never", "--resume")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--resume: expected an earlier run in --out, got none" in err, err
    assert not (work["root"] / "never").exists()
    assert (parts / "training.json").read_bytes() == record  # a finished run is left as it is


def _refused(argv, option, capsys, root):
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("energycrf train: error: "), err
    message = err.removeprefix("energycrf train: error: ")
    assert message.split(":")[0].split(", ")[0].split("/")[0] == option, message
    assert "expected" in message and "got" in message, message
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written
    return message


def _bad_inputs(root: Path) -> None:
    from safetensors.torch import save_file

    if (root / "bad").exists():
        return
    (root / "bad" / "empty").mkdir(parents=True)
    (root / "bad" / "broken").mkdir()
    (root / "bad" / "broken" / "x.png").write_text("not an image")
    (root / "bad" / "wide").mkdir()
    save_file({"latents": torch.zeros(2, 3, 8, 8)}, str(root / "bad" / "wide" / "z.safetensors"))
    (root / "bad" / "corrector.json").write_text(json.dumps({"kind": "corrector", "sampler": "dpmpp",
                                                             "spacing": "trailing", "calls": 8}))
    (root / "bad" / "paper.json").write_text(json.dumps({"pre_steps": 40, "pre_run": 31, "post_steps": 50,
                                                         "post_run": 2, "crf_output": "clean"}))
    (root / "bad" / "done").mkdir()
    (root / "bad" / "done" / "config.json").write_text("{}")


REFUSALS = [
    (["--stage", "3"], "--stage", "expected 1, 2 or 1,2"),
    (["--stage", "1", "--images", "nowhere"], "--images", "no such folder"),
    (["--stage", "1", "--images", "bad/empty"], "--images", "which holds none"),
    (["--stage", "1"], "--images", "for stage 1"),
    (["--stage", "1", "--images", "images", "--latents", "latents"], "--images", "either --images or --latents"),
    (["--stage", "1", "--images", "bad/broken"], "--images", "x.png"),
    (["--stage", "1", "--latents", "bad/wide"], "--latents", "(the pipeline's latent channels)"),
    (["--stage", "1", "--images", "images", "--shards", "shards"], "--shards", "stage 2's data"),
    (["--stage", "2"], "--shards", "for stage 2"),
    (["--stage", "2", "--shards", "shards", "--pre-run", "31"], "--pre-steps", "the plan of the shards"),
    (["--stage", "2", "--shards", "shards", "--plan", "bad/paper.json"], "--plan", "35 of 40 steps"),
    (["--stage", "2", "--shards", "shards", "--plan", "bad/corrector.json"], "--plan", "a splice plan"),
    (["--stage", "1", "--images", "images", "--plan", "bad/paper.json", "--pre-run", "30"], "--plan", "both"),
    (["--stage", "1", "--images", "images", "--pre-run", "45"], "--pre-steps", "pre_run must be < pre_steps"),
    (["--stage", "1,2", "--images", "images", "--shards", "shards", "--init", "images"], "--init", "alone"),
    (["--stage", "2", "--shards", "shards", "--init", "images"], "--init", "a saved LatentCRF"),
    (["--stage", "1", "--images", "images", "--batch-size", "7"], "--batch-size", "at most 6 per process"),
    (["--stage", "1", "--images", "images", "--out", "bad/done"], "--out", "pass --resume"),
    (["--stage", "1", "--images", "images", "--out", "images"], "--out", "an input itself"),
    (["--stage", "1", "--latents", "latents", "--resolution", "32"], "--resolution", "--images only"),
    (["--stage", "1", "--images", "images", "--steps", "1,2,3"], "--steps", "or two"),
]


@pytest.mark.parametrize("argv, option, says", REFUSALS, ids=[" ".join(a) for a, _, _ in REFUSALS])
def test_bad_input_is_refused_in_one_line(work, argv, option, says, capsys, monkeypatch):
    root = work["root"]
    _bad_inputs(root)
    monkeypatch.chdir(root)
    base = ["--pipeline", "pipe", *([] if "--out" in argv else ["--out", "new"]), "--threads", "1"]
    message = _refused([*argv, *base], option, capsys, root)
    assert says in message, message


def test_a_pipeline_folder_is_required(work, capsys, monkeypatch):
    monkeypatch.chdir(work["root"])
    _refused(["--stage", "1", "--images", "images", "--pipeline", "images", "--out", "new"], "--pipeline", capsys,
             work["root"])


def test_resume_with_other_settings_is_refused(work, capsys):
    out = work["root"] / "short"
    argv = ["--stage", "1", "--pipeline", str(work["pipeline"]), "--images", str(work["images"]), "--out", str(out),
            "--steps", "1", "--batch-size", "2", *TINY]
    assert cli.main(["train", *argv]) == 0
    message = _refused([*argv, "--resume", "--seed", "1"], "--resume", capsys, work["root"])
    assert "--seed (was 0, now 1)" in message
    message = _refused(argv, "--out", capsys, work["root"])  # without --resume
    assert "which holds" in message and "training.json" in message


def test_per_stage_values_and_the_recorded_command():
    parser = argparse.ArgumentParser()
    train_options.add_arguments(parser)
    args = parser.parse_args(["--stage", "1,2", "--pipeline", "p", "--out", "o", "--images", "i", "--steps", "5",
                              "--lr", "1e-3,2e-4", "--resume", "--stop-after", "2"])
    assert [train_options.stage_value(args.steps, k) for k in (1, 2)] == [5, 5]
    assert [train_options.stage_value(args.lr, k) for k in (1, 2)] == [1e-3, 2e-4]
    command = train_options.command_line(args)
    assert "--lr 0.001,0.0002" in command and "--resume" not in command and "--stop-after" not in command
    again = parser.parse_args(shlex.split(command)[2:])
    assert {k: v for k, v in vars(again).items() if k not in train_options.NOT_RECORDED} == \
        {k: v for k, v in vars(args).items() if k not in train_options.NOT_RECORDED}


def test_load_image_cuts_the_centre_and_converts_to_the_vae_channels(tmp_path):
    from PIL import Image

    from energycrf.apps.train_data import load_image

    a = (np.arange(16 * 32 * 3) % 251).astype(np.uint8).reshape(16, 32, 3)
    Image.fromarray(a).save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png", (16, 16), 3)  # no resampling: the middle 16 columns
    torch.testing.assert_close(x, torch.from_numpy(a[:, 8:24].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1)
    grey = load_image(tmp_path / "wide.png", (8, 8), 1)
    assert grey.shape == (1, 8, 8) and -1 <= grey.min() and grey.max() <= 1


def test_two_processes_match_one(work):
    """``torchrun --nproc_per_node 2`` (gloo on CPU), batch 1 each = one process with batch 2."""
    from safetensors.torch import load_file

    def argv(out, batch, root=Path(".")):
        return ["train", "--stage", "1", "--pipeline", str(root / "pipe"), "--images", str(root / "images"),
                "--out", str(root / out), "--steps", "3", "--batch-size", str(batch), "--adv-weight", "0", *TINY]

    assert cli.main(argv("one", 2, work["root"])) == 0
    _energycrf(*argv("two", 1), cwd=work["root"],
               launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    one, two = work["root"] / "one", work["root"] / "two"
    assert json.loads((two / "training.json").read_text())["processes"] == 2
    a, b = load_file(str(one / WEIGHTS_NAME)), load_file(str(two / WEIGHTS_NAME))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    for ra, rb in zip(_log(one), _log(two)):
        assert ra["step"] == rb["step"] and abs(ra["loss"] - rb["loss"]) <= 1e-5 * abs(ra["loss"])
