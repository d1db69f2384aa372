"""The tiny diffusers pipelines of ``energycrf.testing.tiny_pipelines``: saved, reloaded offline, usable."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from energycrf.testing.tiny_pipelines import SD15_SCHEDULER, TOKENS, tiny_sd_pipeline, tiny_sdxl_pipeline  # noqa: E402


def test_tiny_sd_saves_reloads_and_makes_latents(tmp_path):
    from diffusers import DiffusionPipeline

    pipe = tiny_sd_pipeline(tmp_path / "sd", image_channels=1)
    again = DiffusionPipeline.from_pretrained(str(tmp_path / "sd"), local_files_only=True)
    assert type(again).__name__ == "StableDiffusionPipeline" and again.vae.config.in_channels == 1
    assert dict(again.scheduler.config)["steps_offset"] == SD15_SCHEDULER["steps_offset"]
    for (k, v), (_, w) in zip(pipe.unet.state_dict().items(), again.unet.state_dict().items()):
        assert torch.equal(v, w), k
    again.set_progress_bar_config(disable=True)
    z = again("a cat", num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert z.shape == (1, 4, 8, 8) and torch.isfinite(z).all()
    emb = again.encode_prompt("a cat", "cpu", 1, False)[0]
    assert emb.shape == (1, TOKENS, 32)
    # the seed fixes the weights: the same seed, the same pipeline; another, another
    assert torch.equal(tiny_sd_pipeline(image_channels=1).unet.conv_in.weight, pipe.unet.conv_in.weight)
    assert not torch.equal(tiny_sd_pipeline(seed=1).unet.conv_in.weight, pipe.unet.conv_in.weight)


def test_tiny_sdxl_has_two_text_encoders():
    pipe = tiny_sdxl_pipeline()
    emb, _, pooled, _ = pipe.encode_prompt("a cat", device="cpu", num_images_per_prompt=1,
                                           do_classifier_free_guidance=False)
    assert emb.shape == (1, TOKENS, 64) and pooled.shape == (1, 32)
    assert pipe.unet.config.cross_attention_dim == 64


def test_image_channels_are_checked():
    with pytest.raises(ValueError, match="image_channels must be 1 .* or 3"):
        tiny_sd_pipeline(image_channels=4)
