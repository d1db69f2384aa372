"""The runnable example of docs/any-latent-model.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "any-latent-model.md"


def test_any_latent_model_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 2  # the second, against generate on the shipped model: tests/apps/ldm/test_docs_examples.py
    exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "torch.Size([2, 4, 16, 16]) 33"
    assert out[1] == "torch.Size([2, 4, 16, 16]) torch.Size([2, 4, 16, 16])"
