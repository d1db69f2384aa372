"""docs/any-latent-model.md's example against ``generate`` runs as written, and the page's
claim holds: the plain loop with the scheduler's own final alpha gives generate's latents."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tests.apps.ldm.conftest import needs_text

DOC = Path(__file__).resolve().parents[3] / "docs" / "any-latent-model.md"


def _block(title: str) -> str:
    """The python block under the section ``## {title}``."""
    section = DOC.read_text(encoding="utf-8").split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


@needs_text
def test_splice_sample_gives_generates_latents(capsys):
    namespace = {"__name__": "docs_example"}
    exec(compile(_block("The same latents as `generate`"), str(DOC), "exec"), namespace)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "0.99915"                      # set_alpha_to_one=False: a(-1) = a_0
    ours, theirs = namespace["ours"], namespace["theirs"]
    assert ours.shape == theirs.shape == (1, 4, 8, 8)
    assert float((ours - theirs).abs().max()) < 1e-5
    assert float(out[1]) < 1e-5

    # what the page warns about: ending on alpha = 1 (from_betas' default) gives other latents
    from energycrf.integrations import NoiseSchedule, splice_sample

    ns = namespace
    wrong = NoiseSchedule.from_betas(0.00085, 0.012, "scaled_linear")
    assert wrong.a(-1) == 1.0
    with torch.no_grad():
        other = splice_sample(ns["model"], ns["crf"], ns["z_T"], wrong, ns["plan"],
                              cond=torch.cat([ns["negative"], ns["text"]]), crf_cond=ns["text"], steps_offset=1)
    assert float((other - theirs).abs().max()) > 0.01
