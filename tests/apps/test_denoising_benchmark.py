"""benchmarks/denoising.py --outside: photographs outside skimage, loaded offline, with a fixed noisy copy."""

from __future__ import annotations

import numpy as np
import pytest


def test_outside_photographs_are_grey_crops_with_a_repeatable_noisy_copy(load_script):
    mod = load_script("benchmarks/denoising.py")
    from energycrf.apps.photographs import PHOTOGRAPHS, load_photograph

    skimage_sets = [load_photograph(n) for n in PHOTOGRAPHS]
    for name in mod.OUTSIDE:
        clean, noisy = mod.noisy_pair(name, 25)
        assert clean.shape == (mod.CROP, mod.CROP) and clean.dtype == np.float64
        assert 0.0 <= clean.min() and clean.max() <= 1.0 and clean.std() > 0.05  # a real photograph, not a flat field
        assert not any(p.shape == clean.shape and np.allclose(p, clean) for p in skimage_sets)
        again = mod.noisy_pair(name, 25)
        assert np.array_equal(again[1], noisy)  # the same noisy copy every run
        assert abs((noisy - clean).std() - 25 / 255) < 0.004  # sigma on the 0-255 scale
        assert not np.array_equal(mod.noisy_pair(name, 15)[1] - clean, (noisy - clean) * 15 / 25)
    a, b = (mod.noisy_pair(n, 25) for n in ("china", "flower"))
    assert not np.allclose(a[1] - a[0], b[1] - b[0])  # each photograph its own noise
    assert np.array_equal(mod.noisy_pair("camera", 25)[1], mod.heldout_pair("camera", 25)[1])  # the test set unchanged
    with pytest.raises(ValueError, match="name must be one of"):
        mod.outside_photograph("lena")


def test_whole_outside_photographs_and_the_paired_comparison(load_script):
    mod = load_script("benchmarks/denoising.py")
    whole = mod.outside_photograph("china", 0)
    crop = mod.outside_photograph("china")
    assert whole.shape == (427, 640)
    top, left = (427 - mod.CROP) // 2, (640 - mod.CROP) // 2
    assert np.array_equal(whole[top:top + mod.CROP, left:left + mod.CROP], crop)
    clean, noisy = mod.noisy_pair("china", 25, 0)
    assert clean.shape == whole.shape and abs((noisy - clean).std() - 25 / 255) < 0.002
    for bad in (-1, 428, 2.5, True):
        with pytest.raises(ValueError, match="crop: expected an int in"):
            mod.outside_photograph("china", bad)
    rows = {"BM3D": {"per_image": [{"psnr": 30.0}, {"psnr": 28.0}, {"psnr": 33.0}]},
            "mine": {"per_image": [{"psnr": 30.5}, {"psnr": 27.9}, {"psnr": 33.3}]}}
    assert mod.paired_vs(rows, "mine") == "+0.23 [-0.10, +0.50] (2/3)"
    assert "load average" in mod.machine()


def test_methods_subset_loads_and_runs_only_those_rows_and_bm3d(load_script, tmp_path):
    from energycrf.apps.denoise import PixelDenoiser, StagedFoEDenoiser

    PixelDenoiser(StagedFoEDenoiser(num_stages=1, num_filters=2, kernel_size=3), sigma=25,
                  kind="staged_foe").save_pretrained(tmp_path / "s25")
    mod = load_script("benchmarks/denoising.py")
    tuned = {"tv_weight_factor": 1.0, "nlm_h_factor": 1.0}
    rows = mod.methods(25, tuned, {"mine": str(tmp_path / "s{sigma}")}, ["mine", "TV"])
    assert list(rows) == ["mine", "BM3D", "TV"]
    assert list(mod.methods(25, tuned)) == list(mod.SHIPPED) + list(mod.CLASSICS)
    with pytest.raises(SystemExit):
        mod.main(["--methods", "nothing-like-this", "--sigmas", "25"])


def test_noise_draws_are_independent_copies_and_draw_zero_is_the_recorded_one(load_script):
    """Draw 0 is the pair the runs validate on and the docs report; further draws are new noise of
    the same sigma on the same photograph, for the skimage test set and outside it."""
    mod = load_script("benchmarks/denoising.py")
    from energycrf.apps.denoise import heldout_pair

    for name, crop in (("camera", mod.CROP), ("china", mod.CROP), ("flower", 0)):
        clean, first = mod.noisy_pair(name, 25, crop)
        assert np.array_equal(mod.noisy_pair(name, 25, crop, 0)[1], first)
        draws = [mod.noisy_pair(name, 25, crop, d) for d in (1, 2)]
        for d, (c, noisy) in zip((1, 2), draws):
            assert np.array_equal(c, clean) and np.array_equal(mod.noisy_pair(name, 25, crop, d)[1], noisy)
            assert abs((noisy - clean).std() - 25 / 255) < 0.004
            # independent of draw 0: the noise fields are uncorrelated, not shifted copies
            assert abs(np.corrcoef((noisy - clean).ravel(), (first - clean).ravel())[0, 1]) < 0.02
        assert abs(np.corrcoef((draws[0][1] - clean).ravel(), (draws[1][1] - clean).ravel())[0, 1]) < 0.02
    clean, noisy = heldout_pair("camera", 25)  # the recorded copy is unchanged by the new argument
    rng = np.random.default_rng(25 * 1000 + 13)  # sigma * 1000 + camera's index after the 13 training photographs
    assert np.array_equal(noisy, clean + rng.normal(0.0, 25 / 255, clean.shape))
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="draw: expected an int >= 0"):
            heldout_pair("camera", 25, bad)


def test_per_draw_differences_and_the_draws_option(load_script):
    mod = load_script("benchmarks/denoising.py")
    rows = {"BM3D": {"per_image": [{"draw": 0, "psnr": 30.0}, {"draw": 0, "psnr": 28.0},
                                   {"draw": 1, "psnr": 31.0}, {"draw": 1, "psnr": 29.0}]},
            "mine": {"per_image": [{"draw": 0, "psnr": 30.5}, {"draw": 0, "psnr": 27.9},
                                   {"draw": 1, "psnr": 30.0}, {"draw": 1, "psnr": 29.2}]}}
    assert mod.per_draw_vs(rows, "mine") == "draw 0: +0.20, draw 1: -0.40"
    assert mod.paired_vs(rows, "mine") == "-0.10 [-1.00, +0.50] (2/4)"
    for bad in ("0", "-2"):
        with pytest.raises(SystemExit):
            mod.main(["--draws", bad, "--sigmas", "25"])


def test_an_extra_denoiser_for_another_sigma_or_damaged_is_refused_up_front(load_script, tmp_path, capsys):
    import json
    import shutil

    from energycrf.apps.denoise import pretrained_dir

    mod = load_script("benchmarks/denoising.py")
    for sigma in (15, 25):
        shutil.copytree(pretrained_dir(25, "staged"), tmp_path / f"s{sigma}")
    meta = json.loads((tmp_path / "s15" / "denoiser.json").read_text())
    for argv, message in (
        (["--extra", f"mine={pretrained_dir(25, 'staged')}", "--sigmas", "15", "--methods", "mine"],
         "was trained for sigma 25, got 15"),  # no {sigma}: the sigma-25 model at sigma 15
        (["--extra", f"mine={tmp_path}/s{{sigma}}", "--sigmas", "25", "15", "--methods", "mine"],
         "was trained for sigma 25, got 15"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            mod.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "--extra: expected a denoiser for sigma 15" in err
    (tmp_path / "s15" / "denoiser.json").write_text(json.dumps({**meta, "sigma": "abc"}))
    with pytest.raises(SystemExit) as exit_info:
        mod.main(["--extra", f"mine={tmp_path}/s{{sigma}}", "--sigmas", "25", "15", "--methods", "mine"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "'sigma' must be a positive finite number" in err, err


@pytest.mark.parametrize("argv, message", [
    (["--images", "bogus"], "--images: expected names among"),
    (["--outside", "--images", "camera"], "--images: expected names among ['china', 'flower', 'grace_hopper']"),
    (["--sigmas", "20"], "--sigmas: the shipped rows"),
    (["--sigmas", "0", "--methods", "TV"], "--sigmas: expected positive noise levels"),
    (["--extra", "mine=/nonexistent/{sigma}", "--methods", "mine"], "--extra: expected a denoiser folder"),
    (["--extra", "mine=/nonexistent/{sigma}", "--methods", "TV"], "--extra: expected a denoiser folder"),
])
def test_wrong_arguments_are_one_line_before_any_work(load_script, argv, message, capsys):
    mod = load_script("benchmarks/denoising.py")
    with pytest.raises(SystemExit) as exit_info:
        mod.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err, err
