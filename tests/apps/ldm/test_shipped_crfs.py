"""The shipped LatentCRFs: names, loading by name or path, the plan recorded with each."""

from __future__ import annotations

import json

import pytest

from energycrf.apps.ldm import pretrained
from energycrf.integrations.plan import CorrectorPlan, SplicePlan


def test_names_and_default():
    names = pretrained.crf_names()
    assert names[0] == pretrained.SPLICE_CRF == "latent-crf" and pretrained.DEFAULT_CRF in names
    assert names[1:] == pretrained.corrector_names()
    assert pretrained.crf_dir() == pretrained.crf_dir(pretrained.DEFAULT_CRF)
    with pytest.raises(ValueError, match="shipped"):
        pretrained.crf_dir("no-such-crf")


def test_load_by_name_by_path_and_default_with_plans():
    splice = pretrained.load_crf("latent-crf")
    assert splice.plan == SplicePlan.paper() and not splice.training
    by_path = pretrained.load_crf(pretrained.ROOT / "latent-crf")
    assert by_path.plan == splice.plan
    assert pretrained.load_crf(path=str(pretrained.ROOT / "latent-crf")).plan == splice.plan
    assert type(pretrained.load_crf().plan) in (SplicePlan, CorrectorPlan)
    with pytest.raises(FileNotFoundError, match="no LatentCRF"):
        pretrained.load_crf("no-such-crf")


@pytest.mark.parametrize("name", pretrained.corrector_names())
def test_each_shipped_corrector_records_its_plan_and_command(name):
    d = pretrained.crf_dir(name)
    crf = pretrained.load_crf(name)
    assert isinstance(crf.plan, CorrectorPlan)
    record = json.loads((d / "training.json").read_text())
    assert record["command"].startswith("energycrf train-corrector") and record["plan"] == crf.plan.to_dict()
    assert (d / "README.md").is_file() and (d / "model.safetensors").stat().st_size < 1024 * 1024
