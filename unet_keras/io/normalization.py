"""Intensity normalisation: fitted once on the training images, applied the same way everywhere."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from unet_keras.io.sample import DataError
from unet_keras.record import NormalizationConfig


def fit_normalization(
    images: Iterable[np.ndarray], method: str = "standardize"
) -> NormalizationConfig:
    """Fits `(x - offset) / scale` per channel to (H, W, C) training images.

    "standardize" uses the mean and standard deviation of all pixels of all images (in
    float64, one image at a time); "unit_range" divides by the dtype's maximum (255 for
    uint8, 65535 for uint16, 1 for floats). All images must share channel count and dtype.
    """
    if method not in ("standardize", "unit_range"):
        raise ValueError(f"method must be 'standardize' or 'unit_range', got {method!r}")
    first = None
    count, mean, sum_sq = 0, 0.0, 0.0
    for index, image in enumerate(images):
        if image.ndim != 3:
            raise DataError(f"image {index}: expected (H, W, C), got shape {image.shape}")
        if first is None:
            first = image
        elif image.shape[-1] != first.shape[-1] or image.dtype != first.dtype:
            raise DataError(
                f"image {index} is {image.shape[-1]}-channel {image.dtype} but image 0 is "
                f"{first.shape[-1]}-channel {first.dtype}; all images must share both"
            )
        if method == "standardize":
            # Chan et al.'s merge of per-image moments: exact in float64 without the
            # cancellation of a running sum of squares.
            pixels = image.reshape(-1, image.shape[-1]).astype(np.float64)
            image_mean = pixels.mean(axis=0)
            delta, total = image_mean - mean, count + len(pixels)
            mean = mean + delta * len(pixels) / total
            sum_sq = sum_sq + ((pixels - image_mean) ** 2).sum(axis=0)
            sum_sq = sum_sq + delta**2 * count * len(pixels) / total
            count = total
    if first is None:
        raise DataError("fit_normalization needs at least one image, got none")
    channels = first.shape[-1]
    if method == "standardize":
        std = np.sqrt(sum_sq / count)
        # A constant channel carries nothing to scale; 1 keeps it at zero after the offset.
        offset, scale = mean, np.where(std > 0, std, 1.0)
    else:
        top = np.iinfo(first.dtype).max if np.issubdtype(first.dtype, np.integer) else 1.0
        offset, scale = np.zeros(channels), np.full(channels, float(top))
    return NormalizationConfig(
        method, tuple(offset.tolist()), tuple(scale.tolist()), str(first.dtype)
    )


def normalize(image: np.ndarray, config: NormalizationConfig, source: str = "image") -> np.ndarray:
    """Applies `(x - offset) / scale` per channel to an (..., H, W, C) image, as float32.

    The image must have the channel count and dtype the config was fitted on; `source` names
    it in errors.
    """
    if image.ndim < 3 or image.shape[-1] != config.channels:
        raise DataError(
            f"{source}: shape {image.shape} does not end in the {config.channels} channel(s) "
            "the normalisation was fitted on; expected (H, W, C)"
        )
    if str(image.dtype) != config.input_dtype:
        raise DataError(
            f"{source}: dtype {image.dtype}, but the normalisation was fitted on "
            f"{config.input_dtype} images; convert the image or refit on images like it"
        )
    offset = np.asarray(config.offset, np.float32)
    scale = np.asarray(config.scale, np.float32)
    return (image.astype(np.float32) - offset) / scale
