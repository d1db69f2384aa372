"""`energycrf evaluate` / the LDM demo entry points on the shipped model, small settings."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.apps.ldm.conftest import needs_data, needs_text


def _args(module, argv):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


@needs_data
@needs_text
def test_evaluate_command_writes_json_and_table(tmp_path, capsys):
    from energycrf.apps.ldm import evaluate_command as E

    out = tmp_path / "ev"
    assert E.run(_args(E, ["--rows", "ldm20,crf20", "--seeds", "2", "--out", str(out)])) == 0
    rows = json.loads((out / "table.json").read_text())
    assert [r["method"] for r in rows] == ["LDM (DDIM)", "LatentCRF"] and [r["unet_calls"] for r in rows] == [20, 20]
    assert all(r["images"] == 20 for r in rows)
    assert all(r["ms_per_image"] > 0 and "interleaved" in r["timing"] for r in rows)
    assert "| LatentCRF | 20 |" in (out / "table.md").read_text()
    assert "LatentCRF" in capsys.readouterr().out
    from energycrf import cli

    with pytest.raises(SystemExit) as exit_info:   # a usage error: status 2, one line naming --rows
        cli.main(["evaluate", "--rows", "ldm49", "--out", str(out)])
    assert exit_info.value.code == 2 and "evaluate: error: --rows: expected" in capsys.readouterr().err


@needs_text
def test_demo_picture_only(tmp_path, capsys):
    from energycrf.apps.ldm import demo

    out = tmp_path / "demo"
    assert demo.run(_args(demo, ["--no-table", "--grid-prompts", "1", "--out", str(out)])) == 0
    png = out / "ldm_vs_latentcrf.png"
    assert png.is_file() and png.stat().st_size > 1000
    assert "LatentCRF 33" in capsys.readouterr().out
