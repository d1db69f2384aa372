"""``energycrf --help``, every command's ``--help`` and the usage errors answer without importing
torch or the other heavy libraries (issue 23: each of them used to import torch first).

Each case runs in a fresh interpreter: the router's ``main`` on the arguments, then the
heavy modules found in ``sys.modules`` (benchmarks/cli_startup.py times the same calls).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from energycrf import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "scipy", "diffusers", "transformers", "matplotlib", "skimage", "PIL", "tqdm",
         "safetensors")

PROBE = """
import json, sys
from energycrf.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit_:
    status = exit_.code
print(json.dumps({"status": status, "heavy": [m for m in %r if m in sys.modules]}), file=sys.__stderr__)
""" % (HEAVY,)


def _probe(argv: list[str], cwd: Path) -> tuple[int, list[str], str, str]:
    """``(exit status, heavy modules imported, stdout, stderr without the probe's line)``."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    *err, last = proc.stderr.rstrip("\n").split("\n")
    report = json.loads(last)
    return report["status"], report["heavy"], proc.stdout, "\n".join(err)


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help_imports_nothing_heavy(command, tmp_path):
    status, heavy, out, _ = _probe([*([command] if command else []), "--help"], tmp_path)
    assert status == 0 and heavy == [], heavy
    assert (f"energycrf {command}" if command else "COMMAND") in out


def _files(tmp_path: Path) -> dict[str, Path]:
    image = tmp_path / "img.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")  # only its name and existence matter below
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "table.md").write_text("an earlier run\n")
    (tmp_path / "prompts.txt").write_text("a bag\n")
    return {"image": image, "taken": tmp_path / "taken"}


# (argv, the option the one-line message names): usage errors found before anything heavy loads
USAGE_ERRORS = [
    ([], "COMMAND"),
    (["no-such-command"], "COMMAND"),
    (["denoise", "missing.png", "-o", "out.png"], "IN"),
    (["denoise", "img.png", "--sigma", "30", "-o", "out.png"], "--sigma"),
    (["denoise", "img.png", "-o", "img.png"], "--output"),
    (["denoise", "img.png", "-o", "out.tif"], "--output"),
    (["denoise", "img.png"], "--output"),
    (["denoise", "img.png", "-o", "out.png", "--sigma", "abc"], "--sigma"),
    (["energy-demo", "--size", "0"], "--size"),
    (["energy-demo", "--expert", "gauss"], "--expert"),
    (["compare-solvers", "--latent", "z.pt"], "--latent"),
    (["compare-solvers", "--out-dir", "taken"], "--out-dir"),
    (["compare-solvers", "--image", "nope"], "--image"),
    (["evaluate", "--rows", "ldm49"], "--rows"),
    (["evaluate", "--pipeline", "."], "--pipeline"),
    (["demo", "--seeds", "1"], "--seeds"),
    (["demo", "--out", "img.png"], "--out"),
    (["distill-data", "--pipeline", ".", "--prompts", "prompts.txt", "--out", "o"], "--pipeline"),
    (["generate", "--pipeline", ".", "--prompt", "a bag", "--out", "o"], "--pipeline"),
    (["generate", "--prompt", "a bag", "--seeds", "2-1", "--out", "o"], "--seeds"),
    (["generate", "--prompt", "a bag", "--out", "taken/table.md"], "--out"),
    (["evaluate", "--prompts", "prompts.txt", "--reference", "taken"], "--steps"),
    (["evaluate", "--prompts", "prompts.txt", "--reference", "taken", "--steps", "4"], "--prompts"),
    (["train", "--stage", "1", "--pipeline", ".", "--out", "o"], "--pipeline"),
    (["denoise", "img.png", "-o", "out.png", "--bogus"], "--bogus"),
]


@pytest.mark.parametrize("argv, option", USAGE_ERRORS, ids=[" ".join(a) or "none" for a, _ in USAGE_ERRORS])
def test_usage_errors_import_nothing_heavy(argv, option, tmp_path):
    _files(tmp_path)
    status, heavy, out, err = _probe(argv, tmp_path)
    assert status == 2 and heavy == [], (heavy, err)
    assert out == "" and len(err.splitlines()) == 1, err
    assert f"error: {option}" in err and "Traceback" not in err


def test_python_dash_m_answers_help_and_a_usage_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    ok = subprocess.run([sys.executable, "-m", "energycrf", "--help"], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0 and "denoise" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "energycrf", "denoise", "missing.png", "-o", "o.png"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr == "energycrf denoise: error: IN: expected an existing image, got 'missing.png' (no such file)\n"


def test_import_energycrf_is_light_and_the_energies_load_on_use():
    code = ("import sys, energycrf as ec; light = 'torch' not in sys.modules; "
            "E = ec.energies.Unary() + ec.energies.Pairwise(channels=1); from energycrf import Energy; "
            "print(light, isinstance(E, Energy), ec.Energy is Energy)")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["True", "True", "True"], proc.stderr


def test_the_startup_benchmark_runs(load_script, capsys):
    rows = load_script("benchmarks/cli_startup.py").main(["--runs", "1"])
    assert [r["call"] for r in rows][2] == "energycrf --help" and all(r["median_s"] > 0 for r in rows)
    assert "load average" in capsys.readouterr().out
