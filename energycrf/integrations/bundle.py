"""A pipeline, its CRF and the splice plan in one local directory (``save_pretrained`` /
``load_pretrained``); diffusers is imported only to load."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .plan import SplicePlan

__all__ = ["CRF_SUBFOLDER", "PLAN_FILE", "save_pretrained", "load_pretrained"]

CRF_SUBFOLDER = "latent_crf"
PLAN_FILE = "energycrf_plan.json"


def save_pretrained(directory, pipe, crf, plan: SplicePlan | None = None):
    """Write a pipeline, its CRF and the plan into one local directory.

    ``directory/`` holds the pipeline (``pipe.save_pretrained``, safetensors),
    ``directory/latent_crf/`` the CRF (``crf.save_pretrained``) and
    ``directory/energycrf_plan.json`` the plan. diffusers ignores the two extras.
    """
    plan = SplicePlan() if plan is None else plan
    if not isinstance(plan, SplicePlan):
        raise TypeError(f"plan must be a SplicePlan or None, got {type(plan).__name__}")
    if not hasattr(crf, "save_pretrained"):
        raise TypeError(f"crf must have save_pretrained (ec.LatentCRF does), got {type(crf).__name__}")
    path = Path(directory)
    pipe.save_pretrained(str(path))
    crf.save_pretrained(path / CRF_SUBFOLDER)
    tmp = path / (PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path / PLAN_FILE)
    return path


def load_pretrained(directory, pipeline_cls=None, crf_cls=None, **pipeline_kwargs):
    """Load ``(pipe, crf, plan)`` written by :func:`save_pretrained` from a local directory.

    ``pipeline_cls`` defaults to ``diffusers.DiffusionPipeline`` (the class named in
    ``model_index.json``), ``crf_cls`` to ``ec.LatentCRF``; nothing is downloaded.
    """
    from diffusers import DiffusionPipeline

    path = Path(directory)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} holds no model_index.json (not a saved pipeline directory)")
    if crf_cls is None:
        from energycrf.learned.latent_crf import LatentCRF as crf_cls
    pipe = (pipeline_cls or DiffusionPipeline).from_pretrained(str(path), local_files_only=True, **pipeline_kwargs)
    crf = crf_cls.from_pretrained(path / CRF_SUBFOLDER)
    plan_file = path / PLAN_FILE
    plan = SplicePlan.from_dict(json.loads(plan_file.read_text())) if plan_file.is_file() else SplicePlan()
    return pipe, crf, plan
