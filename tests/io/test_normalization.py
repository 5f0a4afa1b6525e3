"""Fitting and applying intensity normalisation."""

import numpy as np
import pytest

from unet_keras.io.normalization import fit_normalization, normalize
from unet_keras.io.sample import DataError
from unet_keras.record import NormalizationConfig

RNG = np.random.default_rng(0)


def test_standardize_matches_statistics_of_all_pixels_per_channel():
    # Images of different sizes: the fit must weight every pixel, not every image, equally.
    images = [
        RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8),
        RNG.integers(100, 120, (9, 4, 3), dtype=np.uint8),
    ]
    config = fit_normalization(iter(images))
    pixels = np.concatenate([i.reshape(-1, 3) for i in images]).astype(np.float64)
    np.testing.assert_allclose(config.offset, pixels.mean(axis=0))
    np.testing.assert_allclose(config.scale, pixels.std(axis=0))
    assert config.method == "standardize" and config.input_dtype == "uint8"
    normalised = np.concatenate([normalize(i, config).reshape(-1, 3) for i in images])
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(normalised.std(axis=0), 1, atol=1e-5)


def test_standardize_is_accurate_for_a_large_mean_and_small_spread():
    images = [np.full((4, 4, 1), 60000, np.uint16) + i for i in range(3)]
    config = fit_normalization(images)
    assert config.offset == pytest.approx((60001.0,))
    assert config.scale == pytest.approx((np.sqrt(2 / 3),))


def test_constant_channel_gets_unit_scale():
    image = np.zeros((4, 4, 2), np.uint8)
    image[..., 0] = np.arange(4)
    config = fit_normalization([image])
    assert config.scale[1] == 1.0
    assert np.all(normalize(image, config)[..., 1] == 0)


@pytest.mark.parametrize(
    ("dtype", "scale"), [(np.uint8, 255.0), (np.uint16, 65535.0), (np.float32, 1.0)]
)
def test_unit_range_divides_by_dtype_maximum(dtype, scale):
    image = np.ones((2, 2, 1), dtype)
    config = fit_normalization([image], method="unit_range")
    assert config.offset == (0.0,) and config.scale == (scale,)
    assert config.input_dtype == np.dtype(dtype).name
    np.testing.assert_allclose(normalize(image, config), 1 / scale)


def test_fit_rejects_no_images_mixed_images_and_unknown_method():
    with pytest.raises(DataError, match="at least one image"):
        fit_normalization([])
    gray, rgb = np.zeros((2, 2, 1), np.uint8), np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(DataError, match="image 1 is 3-channel uint8 but image 0 is 1-channel"):
        fit_normalization([gray, rgb])
    with pytest.raises(DataError, match="image 1 is 1-channel uint16"):
        fit_normalization([gray, gray.astype(np.uint16)], method="unit_range")
    with pytest.raises(DataError, match=r"expected \(H, W, C\)"):
        fit_normalization([np.zeros((2, 2), np.uint8)])
    with pytest.raises(ValueError, match="method must be"):
        fit_normalization([gray], method="minmax")


def test_normalize_checks_channels_and_dtype_against_the_config():
    config = NormalizationConfig("standardize", (10.0,), (2.0,), "uint8")
    np.testing.assert_allclose(normalize(np.full((1, 2, 2, 1), 14, np.uint8), config), 2.0)
    with pytest.raises(DataError, match=r"a\.png: shape \(2, 2, 3\) .*1 channel"):
        normalize(np.zeros((2, 2, 3), np.uint8), config, source="a.png")
    with pytest.raises(DataError, match=r"shape \(2, 2\)"):
        normalize(np.zeros((2, 2), np.uint8), config)
    with pytest.raises(DataError, match=r"dtype uint16, but .* fitted on uint8"):
        normalize(np.zeros((2, 2, 1), np.uint16), config)
