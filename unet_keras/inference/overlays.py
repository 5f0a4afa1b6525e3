"""Images for people to look at: any image as 8-bit RGB, predicted outlines drawn in."""

from __future__ import annotations

import numpy as np

OVERLAY_COLOUR = (255, 48, 48)


def image_to_rgb(image: np.ndarray) -> np.ndarray:
    """Scales an (H, W) or (H, W, C) image by its min/max to RGB uint8; grey is replicated."""
    values = image.astype(np.float64)
    if values.ndim == 3:
        values = values[..., :3] if values.shape[2] >= 3 else values[..., :1]
    else:
        values = values[..., None]
    low, high = float(np.nanmin(values, initial=np.inf)), float(np.nanmax(values, initial=-np.inf))
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    rgb = np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
    return np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb


def boundary_overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image as 8-bit RGB with the predicted objects' outlines drawn in red."""
    rgb = image_to_rgb(image)
    edges = np.zeros(labels.shape, bool)
    # An object pixel is on an outline when a 4-neighbour belongs to another class.
    vertical, horizontal = labels[1:] != labels[:-1], labels[:, 1:] != labels[:, :-1]
    edges[1:] |= vertical
    edges[:-1] |= vertical
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    rgb[edges & (labels > 0)] = OVERLAY_COLOUR
    return rgb
