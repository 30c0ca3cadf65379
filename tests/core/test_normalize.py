"""Image layouts and percentile normalisation."""

import numpy as np
import pytest

from napari_unet.core.errors import InputError
from napari_unet.core.normalize import as_samples, normalize, percentiles


@pytest.mark.parametrize(
    ("shape", "n", "channels"),
    [((40, 50), 1, 1), ((40, 50, 3), 1, 3), ((40, 50, 4), 1, 4), ((5, 40, 50), 5, 1), ((2, 40, 50, 3), 2, 3)],
)
def test_layouts_become_channel_last_samples(shape, n, channels):
    samples, _ = as_samples(np.zeros(shape, np.uint8))
    assert len(samples) == n and samples[0].shape == (40, 50, channels)


def test_rgba_drops_alpha_and_gray_repeats_for_three_channel_models():
    rgba, _ = as_samples(np.zeros((40, 50, 4)), in_channels=3)
    gray, _ = as_samples(np.zeros((40, 50)), in_channels=3)
    assert rgba[0].shape == gray[0].shape == (40, 50, 3)


def test_channel_mismatch_is_explained():
    with pytest.raises(InputError, match="expects 1"):
        as_samples(np.zeros((2, 40, 50, 3)), in_channels=1)


def test_labels_must_match_the_image():
    with pytest.raises(InputError, match="spatial shape"):
        as_samples(np.zeros((40, 50)), np.zeros((40, 51), np.uint8))
    with pytest.raises(InputError, match="spatial shape"):
        as_samples(np.zeros((40, 50)), np.zeros((3, 40, 50), np.uint8))
    _, labels = as_samples(np.zeros((3, 40, 50)), np.ones((3, 40, 50), np.uint16))
    assert len(labels) == 3


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused(bad):
    image = np.zeros((20, 20), np.float32)
    image[3, 4] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        as_samples(image)


def test_empty_and_non_numeric_images_are_refused():
    with pytest.raises(InputError, match="empty"):
        as_samples(np.zeros((0, 5)))
    with pytest.raises(InputError, match="dtype"):
        as_samples(np.array([["a", "b"], ["c", "d"]]))


def test_percentile_normalisation_maps_to_unit_range():
    rng = np.random.default_rng(0)
    image = rng.integers(100, 4000, (64, 64)).astype(np.uint16)
    out = normalize(image, 1, 99)
    lo, hi = percentiles(image, 1, 99)
    assert out.dtype == np.float32
    assert np.isclose(np.percentile(out, 1), 0, atol=1e-3) and np.isclose(np.percentile(out, 99), 1, atol=1e-3)
    assert np.allclose(normalize(image, bounds=(lo, hi)), out)


def test_constant_image_normalises_to_zero():
    assert not normalize(np.full((8, 8), 7, np.uint8)).any()


def test_rgb_image_for_a_one_channel_model_is_explained():
    with pytest.raises(InputError, match="3 channel"):
        as_samples(np.zeros((40, 50, 3), np.uint8), in_channels=1)
