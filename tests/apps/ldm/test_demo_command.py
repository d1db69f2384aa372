"""``energycrf demo`` / ``evaluate`` as a user meets them: what they announce, one progress bar,
the two labelled time columns, and no third-party notices (issue 23)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from energycrf.apps.ldm import evaluate as E
from energycrf.apps.ldm.evaluate_command import table_size
from tests.apps.ldm.conftest import needs_text

REPO_ROOT = Path(__file__).resolve().parents[3]


class _Bar:
    """Stands in for the overall tqdm bar: adds up what it is advanced by."""

    def __init__(self):
        self.n = 0

    def update(self, work):
        self.n += work


@needs_text
def test_table_size_is_the_work_of_run_table(tiny_pipe, monkeypatch):
    """The announced images and the bar's total are what run_table does (warm-ups and timing included)."""
    from energycrf.apps.ldm.classifier import FashionClassifier
    from energycrf.integrations.plan import SplicePlan

    images = []
    sample = E.sample
    monkeypatch.setattr(E, "sample", lambda pipe, prompts, seeds, *a, **k: (
        images.append(len(prompts) * len(seeds)), sample(pipe, prompts, seeds, *a, **k))[1])
    torch.manual_seed(0)
    methods = [E.Method("LDM", steps=3), E.Method("LatentCRF", plan=SplicePlan(pre_steps=4, pre_run=2, post_steps=8,
                                                                                   post_run=1))]
    prompts = [("a photo of a sneaker", 7), ("a bag", 8), ("a coat", 4)]
    bar = _Bar()
    rows = E.run_table(tiny_pipe, lambda z, c: 0.5 * z, prompts, [0, 1], methods, timing_repeats=1, progress=bar,
                       classifier=FashionClassifier(width=4).eval(),
                       reference=E.Reference(np.random.default_rng(0).normal(size=(40, 64))))
    assert table_size(methods, len(prompts), 2, repeats=1) == (sum(images), bar.n)
    table = E.markdown_table(rows)
    assert "| ms / image, steady state | ms / image, waited |" in table.splitlines()[0]
    waited = [float(line.split("|")[-2]) for line in table.splitlines()[2:]]
    assert waited == [round(r["ms_per_image_single_pass"], 1) for r in rows]
    for r in rows:
        del r["ms_per_image_single_pass"]   # timed once: one column, as before
    assert E.markdown_table(rows).splitlines()[0].endswith("| Vendi | ms / image |")


@needs_text
def test_demo_picture_announces_shows_one_bar_and_no_notices(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "energycrf", "demo", "--no-table", "--grid-prompts", "1"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("energycrf demo: a picture of 2 images x 3 methods; 232 UNet calls in all; 1 torch "
                               "thread (load average"), lines[0]
    assert (tmp_path / "energycrf-demo-out" / "ldm_vs_latentcrf.png").stat().st_size > 1000
    # stderr holds the one bar only: no transformers / diffusers notices or loading bars
    bar_lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert bar_lines and all(line.startswith("demo: ") and "left" in line for line in bar_lines), proc.stderr
    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--out: expected a folder without earlier results" in again.stderr
