"""benchmarks/crf_vs_unet.py runs end to end with tiny arguments (the real run is documented in docs/crf-cost.md)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")


def test_script_runs_tiny(tmp_path, capsys, load_script):
    mod = load_script("benchmarks/crf_vs_unet.py")
    assert mod.main(["--tiny", "--threads", "1", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "crf_vs_unet.json").read_text())
    assert (tmp_path / "crf_vs_unet.png").stat().st_size > 0
    assert record["unet"]["config"] == "tiny" and record["crf"]["iterations"] == 5
    ratio = record["crf"]["median_s"] / record["unet"]["median_s"]
    assert record["ratio_crf_over_unet"] == pytest.approx(ratio)
    assert record["plan"]["unet_calls"] == 33 and record["plan"]["baseline_unet_calls"] == 50
    assert record["plan"]["saving"] == pytest.approx(1 - (33 + ratio) / 50)
    assert "ratio CRF / UNet call" in capsys.readouterr().out
