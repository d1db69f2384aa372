"""`energycrf energy-demo` end to end on a tiny image, and the CLI's argument handling."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from energycrf import cli
from energycrf.apps import energy_demo as demo
from energycrf.apps.photographs import load_photograph

TINY = ["--size", "32", "--max-iters", "30", "--quiet"]


def _numbers(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan", text)]


def test_demo_writes_picture_and_summary(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["energy-demo", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    picture = out / "demo.png"
    assert picture.is_file() and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())

    # Every printed number is finite, and the report has its parts.
    assert all(math.isfinite(v) for v in _numbers(printed)), printed
    for part in ("well-posedness", "convexity margin", "E(noisy | noisy)", "E(clean | noisy)", "PSNR"):
        assert part in printed
    table = {line.split()[0]: [float(v) for v in line.split()[1:]]
             for line in printed.splitlines() if line.split() and line.split()[0] in summary["terms"] + ["total"]}
    assert set(table) == {"unary", "pairwise", "field_of_experts", "total"}

    # The numbers mean what they say.
    assert summary["height"] == 32 and summary["width"] == 32
    assert summary["convexity_margin"] == pytest.approx(2.0)   # unit unary weight, convex expert
    assert summary["energy_at_noisy"]["unary"] == 0.0          # y = x
    assert summary["energy_at_clean"]["unary"] > 0.0
    for at in ("energy_at_noisy", "energy_at_clean", "energy_at_solution"):
        terms = summary[at]
        assert terms["total"] == pytest.approx(sum(v for k, v in terms.items() if k != "total"))
        assert table["total"][["energy_at_noisy", "energy_at_clean", "energy_at_solution"].index(at)] == \
            pytest.approx(terms["total"], rel=1e-4, abs=1e-3)
    # The solve lowers the energy below both the observation and the clean image, and denoises.
    assert summary["energy_at_solution"]["total"] < summary["energy_at_clean"]["total"]
    assert summary["energy_at_solution"]["total"] < summary["energy_at_noisy"]["total"]
    assert summary["psnr_db"]["solution"] > summary["psnr_db"]["noisy"] + 1.0


def test_demo_noise_matches_the_documented_protocol():
    """sigma 25/255 from numpy's default_rng(0) on camera gives the 20.16 dB noisy input."""
    clean = load_photograph("camera", 512)
    noisy = clean + 25 / 255 * np.random.default_rng(0).standard_normal(clean.shape)
    psnr = 10 * np.log10(1 / np.mean((noisy - clean) ** 2))
    assert clean.shape == (512, 512) and 0.0 <= clean.min() and clean.max() <= 1.0
    assert psnr == pytest.approx(20.16, abs=0.01)


def test_energy_densities_sum_to_each_term():
    E = demo.build_energy("charbonnier")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 12, 9, generator=g)
    y = x + 0.1 * torch.randn(1, 1, 12, 9, generator=g)
    maps = demo.energy_densities(E, y, x)
    assert list(maps) == E.names
    for name, term in zip(E.names, E.terms):
        assert maps[name].shape == (12, 9)
        assert maps[name].sum() == pytest.approx(float(term(y, x).detach()), rel=1e-4)


@pytest.mark.parametrize("expert", demo.EXPERTS)
def test_build_energy_each_expert(expert):
    E = demo.build_energy(expert)
    x = torch.rand(1, 1, 8, 8)
    assert torch.isfinite(E(x, x)).all()
    margin = E.convexity_margin()
    if expert in ("charbonnier", "huber"):
        assert margin == pytest.approx(2.0)
    else:  # Student-t and the paper's expert have negative curvature: the margin drops below 2w
        assert margin is not None and margin < 2.0


def test_bad_arguments():
    with pytest.raises(SystemExit):
        cli.main(["energy-demo", "--size", "0"])
    with pytest.raises(SystemExit):
        cli.main(["energy-demo", "--image", "not-an-image"])
    with pytest.raises(SystemExit):
        cli.main([])  # a command is required
    with pytest.raises(ValueError, match="expert"):
        demo.build_energy("gaussian")


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "energycrf", "energy-demo", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--size" in proc.stdout and "--out" in proc.stdout


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_registered_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"energycrf {command}" in capsys.readouterr().out
