import numpy as np
import pytest

from energycrf.apps.photographs import PHOTOGRAPHS, add_gaussian_noise, load_photograph


def test_camera_noise_protocol_gives_the_reference_input_psnr():
    clean = load_photograph("camera")
    noisy = add_gaussian_noise(clean, 25, seed=0)
    assert clean.shape == (512, 512) and clean.dtype == np.float64
    assert 0.0 <= clean.min() and clean.max() <= 1.0
    psnr = 10 * np.log10(1.0 / np.mean((noisy - clean) ** 2))
    assert psnr == pytest.approx(20.16, abs=0.01)  # the protocol of the offline peers' figures
    assert noisy.min() < 0.0  # not clipped


@pytest.mark.parametrize("name", PHOTOGRAPHS)
def test_every_listed_photograph_loads_offline_as_gray(name):
    img = load_photograph(name, size=32)
    assert img.ndim == 2 and max(img.shape) == 32 and 0.0 <= img.min() and img.max() <= 1.0


def test_square_resize_and_errors():
    assert load_photograph("astronaut", 20, square=True).shape == (20, 20)
    with pytest.raises(ValueError, match="name must be one of"):
        load_photograph("lily")
    with pytest.raises(ValueError, match="size must be a positive int"):
        load_photograph("camera", 0)
    with pytest.raises(ValueError, match="square=True needs a size"):
        load_photograph("camera", square=True)
    with pytest.raises(ValueError, match="sigma must be"):
        add_gaussian_noise(np.zeros((2, 2)), -1.0)
