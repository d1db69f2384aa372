"""What ``energycrf denoise`` and ``denoise``/``load_denoiser`` accept: alpha channels travel
unchanged beside the denoised channels, one-channel arrays are grey, channels-first arrays and
0-255 data are refused, and the API names the argument it refuses."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from energycrf import cli
from energycrf.apps.denoise import denoise, heldout_pair, load_denoiser, pretrained_dir
from energycrf.apps.denoise_command import read_image, write_image
from energycrf.apps.denoise_inputs import check_pixel_values


@pytest.fixture(scope="module")
def crop():
    clean, noisy = heldout_pair("camera", 25)
    return clean[64:112, 192:240].astype(np.float32), noisy[64:112, 192:240].astype(np.float32)


def _u8(a):
    return np.clip(np.rint(np.clip(a, 0, 1) * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["LA", "RGBA", "P", "1", "L-key", "RGB-key"])
def test_alpha_travels_unchanged_and_grey_stays_grey(tmp_path, crop, mode, capsys):
    """Grey + alpha and 1-bit PNGs are grey images (one channel denoised, not three); RGBA and a
    palette with transparency are RGB; a colour key (tRNS) is an alpha channel; the alpha channel
    comes back untouched in the PNG."""
    _, noisy = crop
    grey = _u8(noisy)
    alpha = np.tile(np.linspace(0, 255, grey.shape[1]).astype(np.uint8), (grey.shape[0], 1))
    if mode == "LA":
        im = Image.fromarray(np.stack([grey, alpha], -1), "LA")
    elif mode == "RGBA":
        im = Image.fromarray(np.stack([grey, grey, grey, alpha], -1), "RGBA")
    elif mode == "P":
        im = Image.fromarray(np.stack([grey] * 3, -1)).quantize(64)
        im.info["transparency"] = 0
    elif mode == "1":
        im = Image.fromarray(grey).convert("1")
    else:  # a colour key: the pixels of one value are transparent (tRNS)
        im = Image.fromarray(grey if mode == "L-key" else np.stack([grey] * 3, -1))
        im.info["transparency"] = int(grey[0, 0]) if mode == "L-key" else (int(grey[0, 0]),) * 3
    src, dst = tmp_path / f"in-{mode}.png", tmp_path / f"out-{mode}.png"
    im.save(src)
    image, a = read_image(src, alpha=True)
    assert image.ndim == (2 if mode in ("LA", "1", "L-key") else 3)
    assert (a is None) == (mode == "1")
    assert cli.main(["denoise", str(src), "-o", str(dst)]) == 0
    assert ("alpha kept" in capsys.readouterr().out) == (a is not None)
    with Image.open(dst) as out:
        assert out.mode == {"LA": "LA", "RGBA": "RGBA", "P": "RGBA", "1": "L", "L-key": "LA", "RGB-key": "RGBA"}[mode]
        if a is not None:
            np.testing.assert_array_equal(np.asarray(out.getchannel("A")), np.rint(a * 255).astype(np.uint8))
    expected = denoise(image, denoiser=load_denoiser(25))
    got = read_image(dst)
    np.testing.assert_allclose(got, np.rint(np.clip(expected, 0, 1) * 255) / 255, atol=1e-6)
    assert read_image(src).shape == image.shape  # without alpha=True the alpha is dropped, the rest the same


def test_alpha_goes_to_the_last_channel_of_a_npy_and_jpeg_has_none(tmp_path, crop, capsys):
    _, noisy = crop
    alpha = np.full(noisy.shape, 200, np.uint8)
    src = tmp_path / "in.png"
    Image.fromarray(np.stack([_u8(noisy), alpha], -1), "LA").save(src)
    assert cli.main(["denoise", str(src), "-o", str(tmp_path / "out.npy")]) == 0
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (*noisy.shape, 2) and np.all(out[..., 1] == np.float32(200 / 255))
    assert cli.main(["denoise", str(src), "-o", str(tmp_path / "out.jpg")]) == 0
    assert "alpha dropped (JPEG has none)" in capsys.readouterr().out
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.mode == "L"


def test_one_channel_arrays_are_written_as_grey_and_others_are_refused(tmp_path, crop):
    _, noisy = crop
    assert cli.main(["denoise", str(_save(tmp_path / "one.npy", noisy[..., None])), "-o", str(tmp_path / "o.png")]) == 0
    with Image.open(tmp_path / "o.png") as out:
        assert out.mode == "L" and out.size == noisy.shape[::-1]
    for shape in ((4, 4, 2), (4, 4, 5)):
        with pytest.raises(ValueError, match=r"OUT: a \.png file holds a grey \[H, W\] or RGB"):
            write_image(tmp_path / "x.png", np.zeros(shape, np.float32))
    write_image(tmp_path / "x.npy", np.zeros((4, 4, 5), np.float32))  # any channel count in a .npy


def _save(path, array):
    np.save(path, array)
    return path


def test_pixel_values_on_another_scale_are_refused_naming_the_hint(crop):
    clean, noisy = crop
    check_pixel_values(noisy, 25)  # noisy values slightly outside [0, 1] are fine
    check_pixel_values(clean + np.float32(7.9 * 50 / 255), 50)
    with pytest.raises(ValueError, match=r"image: expected pixel values on the \[0, 1\] scale .*divide it by 255"):
        denoise(clean * 255, denoiser=load_denoiser(25))
    with pytest.raises(ValueError, match=r"got values from -1 to"):
        denoise(np.linspace(-1, 1, 256, dtype=np.float32).reshape(16, 16), denoiser=load_denoiser(15))  # [-1, 1] data
    with pytest.raises(ValueError, match=r"image: expected channels last"):
        denoise(np.stack([clean] * 3), denoiser=load_denoiser(25))


def test_the_api_names_the_argument_it_refuses(tmp_path, crop):
    _, noisy = crop
    den25 = load_denoiser(25)
    with pytest.raises(ValueError, match="sigma: the denoiser was trained for sigma 25, got 50"):
        denoise(noisy, sigma=50, denoiser=den25)
    np.testing.assert_array_equal(denoise(noisy, sigma=25, denoiser=den25), denoise(noisy, denoiser=den25))
    assert load_denoiser(np.int64(50)).sigma == 50.0 and load_denoiser(np.float32(15)).sigma == 15.0
    ckpt = pretrained_dir(25, "foe")
    assert load_denoiser(checkpoint=ckpt).kind == "foe_energy"
    assert load_denoiser(25, checkpoint=ckpt, model="foe").kind == "foe_energy"  # its own: accepted
    with pytest.raises(ValueError, match="sigma: the checkpoint .* was trained for sigma 25, got 50"):
        load_denoiser(50, checkpoint=ckpt)
    with pytest.raises(ValueError, match="model: the checkpoint .* holds 'foe', got 'staged'"):
        load_denoiser(checkpoint=ckpt, model="staged")
    with pytest.raises(TypeError, match="checkpoint: expected a directory path"):
        load_denoiser(checkpoint=5)
    with pytest.raises(TypeError, match="sigma: expected a number"):
        load_denoiser("25")
    for bad in ("x.png", None):
        with pytest.raises(TypeError, match="image: expected a float array"):
            denoise(bad)
    with pytest.raises(TypeError, match="denoiser: expected a PixelDenoiser"):
        denoise(noisy, denoiser="staged")


@pytest.mark.parametrize("meta, message", [
    ({"kind": "foe_energy", "offset": 0.5, "scale": 4.0},
     "'sigma' must be a positive finite number, got None (missing)"),
    ({"kind": "foe_energy", "sigma": "abc", "offset": 0.5, "scale": 4.0}, "'sigma' must be a positive finite number"),
    ({"kind": "foe_energy", "sigma": 25, "offset": 0.5, "scale": 0}, "'scale' must be a positive finite number"),
    ({"kind": "foe_energy", "sigma": 25, "offset": 0.5, "scale": 4, "pad": -1}, "'pad' must be an int >= 0"),
    ([1, 2], "is not a JSON object"),
])
def test_a_damaged_description_is_named_with_its_key(tmp_path, meta, message):
    import json
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(pretrained_dir(25, "foe"), folder)
    (folder / "denoiser.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_denoiser(checkpoint=folder)


def test_the_docs_direct_solve_of_the_foe_energy_is_what_denoise_computes(crop):
    """docs/denoising.md's block that minimises the shipped FoE energy with ``ec.solve`` runs as
    written and gives ``denoise``'s output away from the border (which ``denoise`` extends by reflection)."""
    from tests.conftest import REPO_ROOT

    text = (REPO_ROOT / "docs" / "denoising.md").read_text()
    block = next(b.split("\n", 1)[1] for b in text.split("```python")[1:] if "ec.solve(den.model.energy" in b)
    clean, noisy = crop
    scope = {"noisy": noisy}
    exec(block.split("```")[0], scope)
    ref = denoise(noisy, denoiser=load_denoiser(25, model="foe"))
    inner = (slice(16, -16), slice(16, -16))
    assert scope["clean"].shape == noisy.shape
    # the minimiser couples every pixel, so the border's treatment reaches inside, by a grey level at most
    diff = np.abs(scope["clean"] - ref)[inner]
    assert diff.max() < 6e-3 and diff.mean() < 1e-3, (diff.max(), diff.mean())
    psnr = lambda est: -10 * np.log10(np.mean((np.clip(est, 0, 1) - clean)[inner] ** 2))  # noqa: E731
    assert psnr(scope["clean"]) > psnr(noisy) + 5
