"""benchmarks/crf_output_choice.py runs with tiny arguments, and its exact relations hold."""

from __future__ import annotations

import json

import pytest


def test_script_runs_and_ideal_post_reproduces_the_teacher(tmp_path, load_script):
    mod = load_script("benchmarks/crf_output_choice.py")
    assert mod.main(["--batch", "2", "--size", "8", "--out", str(tmp_path)]) == 0
    rms = json.loads((tmp_path / "crf_output_choice.json").read_text())["rms_vs_ddim50"]
    assert rms["DDIM, 50 steps (reference)"] == 0.0
    # an ideal 'post' CRF hands the teacher's own z_21 to the teacher's own last steps:
    # the result is the teacher's final latent, i.e. the ideal 'clean' output taken as final
    assert rms["plan + ideal CRF, crf_output='post'"] == pytest.approx(rms["31/40 + ideal CRF, no post steps"], rel=1e-9)
    assert rms["plan, no CRF (identity, 'post')"] > rms["plan + ideal CRF, crf_output='post'"]
