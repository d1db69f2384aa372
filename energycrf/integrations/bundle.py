"""A pipeline, its CRF and the splice plan in one local directory (``save_pretrained`` /
``load_pretrained``); diffusers is imported only to load.

A CRF alone records the plan it was trained for with :func:`save_crf` (``plan.json``
beside ``config.json`` and ``diffusion_pytorch_model.safetensors``, written as one unit
with them; a CRF saved by energycrf 0.1 has ``model.safetensors`` and still loads);
:func:`load_crf` loads it with the plan as ``crf.plan``, which
:func:`energycrf.integrations.diffusers.generate` uses when it is given no plan.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .plan import CorrectorPlan, SplicePlan, plan_from_dict

__all__ = ["CRF_SUBFOLDER", "PLAN_FILE", "CRF_PLAN_FILE", "save_pretrained", "load_pretrained", "save_crf",
           "load_crf", "read_plan"]

CRF_SUBFOLDER = "latent_crf"
PLAN_FILE = "energycrf_plan.json"
CRF_PLAN_FILE = "plan.json"
_PLANS = (SplicePlan, CorrectorPlan)


def save_pretrained(directory, pipe, crf, plan: SplicePlan | None = None):
    """Write a pipeline, its CRF and the plan into one local directory.

    ``directory/`` holds the pipeline (``pipe.save_pretrained``, safetensors),
    ``directory/latent_crf/`` the CRF (``crf.save_pretrained``) and
    ``directory/energycrf_plan.json`` the plan. diffusers ignores the two extras.
    """
    plan = SplicePlan() if plan is None else plan
    if not isinstance(plan, _PLANS):
        raise TypeError(f"plan must be a SplicePlan, a CorrectorPlan or None, got {type(plan).__name__}")
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
    plan = plan_from_dict(json.loads(plan_file.read_text())) if plan_file.is_file() else SplicePlan()
    return pipe, crf, plan


def save_crf(crf, directory, plan: SplicePlan | CorrectorPlan, *, extra_files: dict[str, str] | None = None):
    """Write ``crf`` (``crf.save_pretrained``: ``config.json`` + ``diffusion_pytorch_model.safetensors``)
    with ``plan.json`` and ``extra_files``.

    The files are one unit (:func:`energycrf.io.write_pretrained`: staged, swapped into
    place); ``extra_files`` maps plain file names to text (a training record, a README).
    """
    from energycrf.learned.pretrained import PretrainedModel

    if not isinstance(plan, _PLANS):
        raise TypeError(f"plan must be a SplicePlan or a CorrectorPlan, got {type(plan).__name__}")
    if not isinstance(crf, PretrainedModel):
        raise TypeError(f"crf must be a LatentCRF (a layer with save_pretrained and a config), "
                        f"got {type(crf).__name__}")
    files = {CRF_PLAN_FILE: json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n", **(extra_files or {})}
    return crf.save_pretrained(directory, extra_files=files)


def read_plan(directory) -> SplicePlan | CorrectorPlan | None:
    """The plan recorded beside a saved CRF (``plan.json``), or ``None`` when there is none."""
    from energycrf.io import read_json

    path = Path(directory) / CRF_PLAN_FILE
    return plan_from_dict(read_json(path)) if path.is_file() else None


def load_crf(directory, crf_cls=None):
    """Load a CRF saved by :func:`save_crf` (or ``save_pretrained``), eval mode, with ``crf.plan``.

    ``crf.plan`` is the recorded plan, or ``None`` when the directory records none.
    """
    if crf_cls is None:
        from energycrf.learned.latent_crf import LatentCRF as crf_cls
    crf = crf_cls.from_pretrained(directory).eval()
    crf.plan = read_plan(directory)
    return crf
