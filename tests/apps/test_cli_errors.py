"""Every command answers wrong input with one line, ``energycrf COMMAND: error: OPTION: expected
..., got ...``, and exit status 2, before any work; a failure during the work is one line and
status 1; ``--debug`` shows the traceback instead (issue 23)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from energycrf import cli


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A folder with a good image, a non-image, an integer array, latents and a used output folder."""
    monkeypatch.chdir(tmp_path)
    from PIL import Image

    Image.fromarray((np.arange(256).reshape(16, 16) % 255).astype(np.uint8)).save("img.png")
    (tmp_path / "notes.png").write_text("not an image\n")
    (tmp_path / "notes.txt").write_text("not an image\n")
    np.save("ints.npy", np.zeros((4, 4), np.int64))
    np.save("z.npy", np.zeros((1, 2, 4, 4), np.float32))
    np.save("z_ints.npy", np.zeros((1, 2, 4, 4), np.int64))
    np.save("z_nan.npy", np.where(np.arange(32).reshape(1, 2, 4, 4) % 5 == 0, np.nan, 0.0).astype(np.float32))
    from safetensors.numpy import save_file

    save_file({"a": np.zeros((1, 1, 4, 4), np.float32), "b": np.zeros((1, 1, 4, 4), np.float32)}, "two.safetensors")
    (tmp_path / "used").mkdir()
    for name in ("table.md", "demo.png", "table.json", "ldm_vs_latentcrf.png"):
        (tmp_path / "used" / name).write_text("an earlier run\n")
    (tmp_path / "prompts.txt").write_text("a bag\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    (tmp_path / "pipe" / "rank000-of-001-00000.safetensors").write_bytes(b"")
    (tmp_path / "shards").mkdir()  # prompts under a shard's name, in the folder the shards go to
    (tmp_path / "shards" / "rank000-of-001-00000.safetensors").write_text("a bag\n")
    (tmp_path / "crf").mkdir()  # a LatentCRF's description (its weights are read after the checks)
    (tmp_path / "crf" / "config.json").write_text("{}")
    (tmp_path / "refs").mkdir()
    for k in range(2):
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(tmp_path / "refs" / f"{k}.png")
    (tmp_path / "two_prompts.txt").write_text("a bag\na shoe\n")
    (tmp_path / "foe50").mkdir()  # a checkpoint's description (its weights are read after the checks)
    (tmp_path / "foe50" / "denoiser.json").write_text(json.dumps({"kind": "foe_energy", "sigma": 50.0}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "denoiser.json").write_text('{"kind": "foe_energy", ')
    grey = (np.arange(256).reshape(16, 16) / 255).astype(np.float32)
    np.save("chw.npy", np.stack([grey] * 3))             # channels first
    np.save("scale255.npy", grey * 255)                   # 0-255 values in a float array
    np.save("five.npy", np.stack([grey] * 5, -1))         # five channels: no PNG holds them
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nothing-here.png")
    for name, meta in (("kindless", {"sigma": 25.0}), ("unknown", {"kind": "nonsense", "sigma": 25.0}),
                       ("sigmaless", {"kind": "foe_energy"}), ("badsigma", {"kind": "foe_energy", "sigma": "abc"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "denoiser.json").write_text(json.dumps(meta))
    return tmp_path


#: command -> [(arguments, the option named)]: wrong input of each kind the command takes
WRONG = {
    "sweep": [
        (["--budgets", "0"], "--budgets"),
        (["--budgets", "abc"], "--budgets"),
        (["--methods", "foo"], "--methods"),
        (["--methods", ","], "--methods"),
        (["--seed-sets", "0"], "--seed-sets"),
        (["--seeds", "1"], "--seeds"),
        (["--guidance", "-1"], "--guidance"),
        (["--out", ""], "--out"),
        (["--budgets", "6,50", "--methods", "ddim"], "--budgets"),  # the teacher's own row
    ],
    "train-corrector": [
        (["--out", "c", "--filter-size", "4"], "--filter-size"),
        (["--out", "c", "--filters", "-1"], "--filters"),
        (["--out", "c", "--calls", "0"], "--calls"),
        (["--out", "c", "--sampler", "foo"], "--sampler"),
        (["--out", "c", "--spacing", "foo"], "--spacing"),
        (["--out", "c", "--steps", "-1"], "--steps"),
        (["--out", "c", "--lr", "0"], "--lr"),
        (["--out", "c", "--lr", "inf"], "--lr"),
        (["--out", "c", "--guidance", "inf"], "--guidance"),
        (["--out", "c", "--pixel-weight", "nan"], "--pixel-weight"),
        (["--out", "c", "--calls", "50"], "--calls"),                         # as many as the default teacher
        (["--out", "c", "--calls", "8", "--teacher-steps", "6"], "--calls"),
        (["--out", "c", "--val-fraction", "1"], "--val-fraction"),
        (["--out", ""], "--out"),
    ],
    "denoise": [
        (["missing.png", "-o", "out.png"], "IN"),
        (["notes.png", "-o", "out.png"], "IN"),              # a non-image with an image's name
        (["notes.txt", "-o", "out.png"], "IN"),              # not an image file name
        (["ints.npy", "-o", "out.npy"], "IN"),               # integer pixels
        (["img.png", "--sigma", "30", "-o", "out.png"], "--sigma"),
        (["img.png", "--sigma", "-5", "-o", "out.png"], "--sigma"),
        (["img.png", "--sigma", "nan", "-o", "out.png"], "--sigma"),
        (["img.png", "-o", "img.png"], "--output"),         # its own input
        (["img.png", "-o", "./img.png"], "--output"),
        (["img.png", "-o", "out.tif"], "--output"),
        (["img.png", "-o", "nowhere/out.png"], "--output"),
        (["img.png", "-o", "used"], "--output"),
        (["img.png", "-o", ""], "--output"),
        (["img.png", "-o", "out.png", "--model", "gauss"], "--model"),
        (["img.png", "-o", "out.png", "--checkpoint", "pipe"], "--checkpoint"),
        (["img.png", "-o", "out.png", "--checkpoint", "broken"], "--checkpoint"),  # not JSON
        (["img.png", "-o", "out.png", "--checkpoint", "kindless"], "--checkpoint"),  # no "kind"
        (["img.png", "-o", "out.png", "--checkpoint", "unknown"], "--checkpoint"),   # a kind no loader has
        (["img.png", "-o", "out.png", "--checkpoint", "img.png"], "--checkpoint"),   # a file
        (["img.png", "-o", "out.png", "--checkpoint", "foe50", "--model", "staged"], "--model"),
        (["img.png", "-o", "out.png", "--checkpoint", "foe50", "--sigma", "15"], "--sigma"),
        (["img.png", "-o", "out.png", "--checkpoint", "sigmaless"], "--checkpoint"),  # no "sigma"
        (["img.png", "-o", "out.png", "--checkpoint", "badsigma"], "--checkpoint"),   # "sigma": "abc"
        (["chw.npy", "-o", "out.npy"], "IN"),              # [C, H, W]: would be 3 rows of 16 channels
        (["scale255.npy", "-o", "out.npy"], "IN"),         # values on the 0-255 scale
        (["five.npy", "-o", "out.png"], "--output"),       # five channels into a PNG (found after the work before)
        (["img.png", "-o", "dangling.png"], "--output"),   # a broken symbolic link is not replaced unasked
        (["img.png", "-o", "out.png", "--threads", "0"], "--threads"),
        (["img.png", "-o", "out.png", "--seed", "x"], "--seed"),
    ],
    "compare-solvers": [
        (["--methods", "foo"], "--methods"),
        (["--methods", "lbfgs:bogus=1"], "--methods"),
        (["--methods", "lbfgs:precondition"], "--methods"),
        (["--methods", ","], "--methods"),
        (["--methods", "fft"], "--methods"),                 # quadratic energies only: this one has an FoE term
        (["--methods", "fft,conjugate_gradient"], "--methods"),
        (["--methods", "lbfgs,lbfgs"], "--methods"),
        (["--size", "0"], "--size"),
        (["--image", "nope"], "--image"),
        (["--latent", "missing.npy"], "--latent"),
        (["--latent", "notes.txt"], "--latent"),
        (["--latent", "z_ints.npy", "--out-dir", "o"], "--latent"),
        (["--latent", "z_nan.npy", "--out-dir", "o"], "--latent"),    # NaN: no method could be compared
        (["--latent", "two.safetensors", "--out-dir", "o"], "--key"),
        (["--latent", "two.safetensors", "--key", "c", "--out-dir", "o"], "--key"),
        (["--out-dir", "used"], "--out-dir"),
        (["--out-dir", "img.png"], "--out-dir"),
        (["--out-dir", ""], "--out-dir"),
        (["--max-iters", "0"], "--max-iters"),
        (["--tol", "-1"], "--tol"),
        (["--tol", "nan"], "--tol"),
        (["--tol", "inf"], "--tol"),
        (["--kernel-size", "4"], "--kernel-size"),           # FoE windows are centred: odd
        (["--kernel-size", "0"], "--kernel-size"),
        (["--unary-weight", "0"], "--unary-weight"),
        (["--unary-weight", "inf"], "--unary-weight"),
        (["--max-iters", "-3"], "--max-iters"),
        (["--dtype", "float16"], "--dtype"),
    ],
    "energy-demo": [
        (["--method", "foo"], "--method"),
        (["--method", "fft"], "--method"),
        (["--method", "conjugate_gradient"], "--method"),
        (["--size", "0"], "--size"),
        (["--size", "3"], "--size"),        # smaller than the filters' border allows
        (["--size", "100000"], "--size"),   # tens of GB
        (["--sigma", "-1"], "--sigma"),
        (["--image", "nope"], "--image"),
        (["--expert", "gauss"], "--expert"),
        (["--max-iters", "many"], "--max-iters"),
        (["--max-iters", "0"], "--max-iters"),
        (["--out", "used"], "--out"),
        (["--out", "img.png"], "--out"),
        (["--out", ""], "--out"),
    ],
    "evaluate": [
        (["--rows", "ldm49"], "--rows"),
        (["--rows", ""], "--rows"),
        (["--seeds", "1"], "--seeds"),
        (["--per-class", "0"], "--per-class"),
        (["--guidance", "inf"], "--guidance"),
        (["--pipeline", "missing"], "--pipeline"),
        (["--crf", "missing"], "--crf"),
        (["--out", "used"], "--out"),
        (["--threads", "-1"], "--threads"),
        (["--features", "inception"], "--features"),          # an option of the evaluation of any pipeline, alone
        (["--prompts", "prompts.txt"], "--reference"),
        (["--reference", "used"], "--prompts"),
        (["--prompts", "prompts.txt", "--reference", "used", "--rows", "all"], "--rows"),
        (["--prompts", "prompts.txt", "--reference", "used"], "--steps"),     # no --crf: the rows must be named
        (["--prompts", "prompts.txt", "--reference", "used", "--plan", "{}"], "--plan"),    # a plan needs its CRF
        (["--prompts", "prompts.txt", "--reference", "used", "--steps", "4"], "--prompts"),  # one prompt
        (["--prompts", "prompts.txt", "--reference", "used", "--steps", "0"], "--steps"),
        (["--prompts", "prompts.txt", "--reference", "used", "--steps", "8,50"], "--steps"),  # the teacher itself
        (["--pipeline", "pipe", "--crf", "crf", "--prompts", "two_prompts.txt", "--reference", "refs", "--plan",
          "nope.json", "--out", "o"], "--plan"),
        *[(["--pipeline", "pipe", "--crf", "crf", "--prompts", "two_prompts.txt", "--reference", "refs", "--out", out,
            "--overwrite"], "--out") for out in ("crf", "refs", "refs/eval", "pipe/eval")],  # an input, or inside one
        (["--prompts", "prompts.txt", "--reference", "used", "--features", "vgg"], "--features"),
    ],
    "demo": [
        (["--seeds", "1"], "--seeds"),
        (["--grid-prompts", "11"], "--grid-prompts"),
        (["--per-class", "x"], "--per-class"),
        (["--out", "used"], "--out"),
        (["--out", "img.png"], "--out"),
        (["--out", ""], "--out"),
        (["--full", "--no-table"], "--full"),                # the full table, or no table
    ],
    "generate": [
        ([], "--out"),
        (["--pipeline", "pipe", "--crf", "crf", "--prompt", "a", "--out", "crf"], "--out"),  # an input folder
        (["--pipeline", "pipe", "--crf", "crf", "--prompt", "a", "--out", "pipe/pics"], "--out"),  # inside one
        (["--pipeline", "pipe", "--crf", "crf", "--prompt", "a", "--plan", "nope.json", "--out", "o"], "--plan"),
        (["--out", "o"], "--prompt"),                        # the shipped model, but no prompt
        (["--prompt", "", "--out", "o"], "--prompt"),
        (["--prompts", "missing.txt", "--out", "o"], "--prompts"),
        (["--prompts", "empty.txt", "--out", "o"], "--prompts"),
        (["--pipeline", "missing", "--prompt", "a", "--out", "o"], "--pipeline"),
        (["--pipeline", "pipe", "--prompt", "a", "--out", "o"], "--crf"),    # a pipeline of its own needs its CRF
        (["--pipeline", "pipe", "--crf", "missing", "--prompt", "a", "--out", "o"], "--crf"),
        (["--prompt", "a", "--seeds", "3-1", "--out", "o"], "--seeds"),
        (["--prompt", "a", "--seeds", "1,1", "--out", "o"], "--seeds"),
        (["--prompt", "a", "--seed", "1", "--seeds", "2", "--out", "o"], "--seeds"),
        (["--prompt", "a", "--seed", "-1", "--out", "o"], "--seed"),
        (["--prompt", "a", "--no-crf", "--compare", "--out", "o"], "--no-crf"),
        (["--prompt", "a", "--no-crf", "--crf", "pipe", "--out", "o"], "--no-crf"),
        (["--prompt", "a", "--steps", "0", "--out", "o"], "--steps"),
        (["--prompt", "a", "--sampler", "euler", "--out", "o"], "--sampler"),
        (["--prompt", "a", "--out", "img.png"], "--out"),
        (["--prompt", "a", "--out", ""], "--out"),
        (["--prompt", "a", "--plan", "{not json", "--out", "o"], "--plan"),
        (["--prompt", "a", "--plan", '{"pre_run": 50}', "--out", "o"], "--plan"),
        (["--prompt", "a", "--device", "foo", "--out", "o"], "--device"),
    ],
    "distill-data": [
        ([], "--pipeline"),
        (["--pipeline", "missing", "--prompts", "prompts.txt", "--out", "o"], "--pipeline"),
        (["--pipeline", "pipe", "--prompts", "missing.txt", "--out", "o"], "--prompts"),
        (["--pipeline", "pipe", "--prompts", "empty.txt", "--out", "o"], "--prompts"),
        (["--pipeline", "pipe", "--prompts", "prompts.txt", "--out", "pipe"], "--out"),
        (["--pipeline", "pipe", "--prompts", "prompts.txt", "--out", "pipe/shards"], "--out"),  # inside an input
        (["--pipeline", "pipe", "--prompts", "prompts.txt", "--out", "pipe", "--overwrite"], "--out"),
        (["--pipeline", "pipe", "--prompts", "prompts.txt", "--out", "o", "--resume", "--overwrite"], "--resume"),
        (["--pipeline", "pipe", "--prompts", "shards/rank000-of-001-00000.safetensors", "--out", "shards",
          "--overwrite"], "--out"),  # --overwrite would remove the prompts
        (["--pipeline", "pipe", "--prompts", "shards/rank000-of-001-00000.safetensors", "--out", "shards",
          "--resume"], "--out"),  # a resume would regenerate the unreadable "shard"
        (["--pipeline", "pipe", "--prompts", "prompts.txt", "--out", "o", "--pre-run", "41"], "--pre-steps"),
        (["--pipeline", "pipe", "--prompts", "prompts.txt", "--out", "o", "--batch-size", "0"], "--batch-size"),
        (["--pipeline", "pipe", "--prompts", "prompts.txt", "--out", "o", "--device", "foo"], "--device"),
        (["--pipeline", "pipe", "--prompts", "prompts.txt", "--out", "o", "--device", "cuda:99"], "--device"),
        (["--pipeline", "pipe", "--prompts", "prompts.txt", "--out", "o", "--device", "cuda:-1"], "--device"),
    ],
    "train": [
        ([], "--stage"),
        (["--stage", "3", "--pipeline", "pipe", "--out", "o"], "--stage"),
        (["--stage", "1", "--pipeline", "missing", "--out", "o", "--images", "."], "--pipeline"),
        (["--stage", "1", "--pipeline", "pipe", "--out", "o"], "--images"),
        (["--stage", "1", "--pipeline", "pipe", "--out", "o", "--images", "missing"], "--images"),
        (["--stage", "2", "--pipeline", "pipe", "--out", "o"], "--shards"),
        (["--stage", "1", "--pipeline", "pipe", "--out", "img.png", "--images", "."], "--out"),
        (["--stage", "1", "--pipeline", "pipe", "--out", "o", "--images", ".", "--steps", "0"], "--steps"),
        (["--stage", "1", "--pipeline", "pipe", "--out", "o", "--images", ".", "--kernel-size", "4"], "--kernel-size"),
        (["--stage", "2", "--pipeline", "pipe", "--out", "o", "--shards", "pipe"], "--pipeline"),
    ],
}
CASES = [(command, argv, option) for command, table in WRONG.items() for argv, option in table]


def test_every_command_has_a_table():
    assert set(WRONG) == set(cli.COMMANDS)


@pytest.mark.parametrize("command, argv, option", CASES, ids=[f"{c} {' '.join(a)}" for c, a, _ in CASES])
def test_wrong_input_is_one_line_naming_the_option(command, argv, option, files, capsys):
    before = sorted(p.name for p in files.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, *argv])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"energycrf {command}: error: "), err
    message = err.removeprefix(f"energycrf {command}: error: ")
    assert message.split(":")[0].split(", ")[0].split("/")[0] == option, message
    assert "expected" in message and "got" in message, message
    if "nope.json" in argv:  # a missing file is said as such (not as JSON that does not parse)
        assert "'nope.json' (no such file)" in message, message
    assert "energycrf" not in out  # nothing announced: no work began
    assert sorted(p.name for p in files.iterdir()) == before  # and nothing was written


def test_a_method_for_quadratic_energies_only_is_refused_naming_why(files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare-solvers", "--methods", "fft"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "{" not in err, err
    assert "fft minimises quadratic energies only (with a circular boundary)" in err
    assert "Field of Experts term" in err and "lbfgs" in err  # and which methods would do


def test_a_cuda_device_needs_cuda(files, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["distill-data", "--pipeline", "pipe", "--prompts", "prompts.txt", "--out", "o", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device: expected cpu, or a CUDA device on a machine with CUDA, got 'cuda' (no CUDA here)" in \
        capsys.readouterr().err
    assert not (files / "o").exists()


@pytest.mark.parametrize("argv, per_class, seeds", [
    ([], 1, 8), (["--full"], 2, 16), (["--full", "--seeds", "3"], 2, 3), (["--full", "--per-class", "1"], 1, 16),
    (["--seeds", "4"], 1, 4),
])
def test_demo_full_sets_only_what_was_not_given(argv, per_class, seeds, monkeypatch, tmp_path):
    from energycrf.apps.ldm import demo

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    monkeypatch.setattr(demo, "require_ldm", stop)  # the first step after the checks
    parser = cli._Parser(prog="x")
    demo.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "out"), *argv])
    with pytest.raises(Stop):
        demo.run(args)
    assert (args.per_class, args.seeds) == (per_class, seeds)


@pytest.mark.parametrize("argv", [["denoise", "img.png", "-o", ""], ["compare-solvers", "--out-dir", ""],
                                  ["demo", "--out", ""]])
def test_an_empty_path_is_reported_as_given(argv, files, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert capsys.readouterr().err.rstrip().endswith("got ''")


def test_a_failure_is_one_line_with_status_1_and_debug_shows_the_traceback(files, capsys):
    """A checkpoint folder that passes the checks but has no weights fails while loading."""
    (files / "ckpt").mkdir()
    (files / "ckpt" / "denoiser.json").write_text(json.dumps({"kind": "foe_energy", "sigma": 25.0, "offset": 0.5,
                                                             "scale": 4.0}))
    argv = ["denoise", "img.png", "-o", "out.png", "--checkpoint", "ckpt"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1 and "config.json' is missing" in err
    assert err.startswith("energycrf denoise: error: ") and err.rstrip().endswith("(--debug shows the traceback)")
    assert not (files / "out.png").exists()
    for debug in (["--debug", *argv], [*argv, "--debug"]):  # before or after the command
        with pytest.raises(FileNotFoundError, match="config.json' is missing"):
            cli.main(debug)


def test_debug_shows_the_traceback_of_a_usage_error_and_exits_with_status_2(files, capsys):
    from energycrf.apps._command import UsageError

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--debug", "denoise", "img.png", "--sigma", "30", "-o", "out.png"])
    assert exit_info.value.code == 2  # as without --debug
    assert isinstance(exit_info.value.__cause__, UsageError)
    err = capsys.readouterr().err
    assert "Traceback" in err and "--sigma: expected one of the shipped levels 15, 25, 50, got 30" in err


def test_argparse_messages_in_the_commands_form():
    assert cli.rephrase("argument --model: invalid choice: 'x' (choose from 'a', 'b')") == \
        "--model: expected one of a, b, got 'x'"
    assert cli.rephrase("argument -o/--output: expected one argument") == "--output: expected a value, got none"
    assert cli.rephrase("the following arguments are required: IN, -o/--output") == \
        "IN, --output: expected a value, got none (required)"
    assert cli.rephrase("argument --n: invalid int value: 'x'") == "--n: expected an integer, got 'x'"


@pytest.mark.parametrize("command", ["distill-data", "generate", "evaluate", "train"])
def test_every_option_of_the_four_commands_says_what_it_is(command):
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(cli.COMMANDS[command][0]).add_arguments(parser)
    silent = [action.option_strings[0] for action in parser._actions if not (action.help or "").strip()]
    assert not silent, f"energycrf {command} --help: no help text for {', '.join(silent)}"
