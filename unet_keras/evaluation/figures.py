"""The evaluation figure: image | truth | prediction | errors, side by side."""

from __future__ import annotations

import numpy as np

from unet_keras.inference.overlays import image_to_rgb

FIGURE_SEPARATOR = 4
FALSE_POSITIVE_COLOUR = (255, 0, 255)  # magenta: object predicted on truth boundary
FALSE_NEGATIVE_COLOUR = (0, 255, 0)  # green: boundary predicted inside a truth object
WRONG_CLASS_COLOUR = (255, 255, 0)  # yellow: both objects, different classes (multi-class)


def evaluation_figure(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Draws image | truth | prediction | errors side by side as one RGB uint8 array.

    The image is scaled to 0..255 by its own min and max. Labels are grey levels, class k at
    round(255 k / K) where K is the largest class in either label image, so a class has the
    same grey in both panels. The error panel is the image dimmed, with
    `FALSE_POSITIVE_COLOUR` where an object is predicted on truth boundary (class 0),
    `FALSE_NEGATIVE_COLOUR` where boundary is predicted inside a truth object, and
    `WRONG_CLASS_COLOUR` where both are objects of different classes. Panels are separated
    by `FIGURE_SEPARATOR` white columns: the result is (H, 4 W + 3 FIGURE_SEPARATOR, 3).
    """
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    image = np.asarray(image)
    if truth.shape != predicted.shape or truth.ndim != 2:
        raise ValueError(
            f"truth and predicted must be (H, W) label images of one shape, got truth "
            f"{truth.shape} and predicted {predicted.shape}"
        )
    if image.shape[:2] != truth.shape or image.ndim not in (2, 3):
        raise ValueError(
            f"image must be (H, W) or (H, W, C) with (H, W) = {truth.shape}, got {image.shape}"
        )
    for name, labels in (("truth", truth), ("predicted", predicted)):
        if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
            raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"{name} holds negative class index {labels.min()}")

    grey = image_to_rgb(image)
    top_class = max(int(truth.max(initial=0)), int(predicted.max(initial=0)), 1)
    errors = (grey // 2).astype(np.uint8)  # dimmed so the error colours stand out
    truth_object, predicted_object = truth > 0, predicted > 0
    errors[predicted_object & ~truth_object] = FALSE_POSITIVE_COLOUR
    errors[truth_object & ~predicted_object] = FALSE_NEGATIVE_COLOUR
    errors[truth_object & predicted_object & (truth != predicted)] = WRONG_CLASS_COLOUR

    separator = np.full((truth.shape[0], FIGURE_SEPARATOR, 3), 255, np.uint8)
    panels = [grey, _labels_to_rgb(truth, top_class), _labels_to_rgb(predicted, top_class)]
    pieces = []
    for panel in [*panels, errors]:
        pieces.extend((panel, separator))
    return np.concatenate(pieces[:-1], axis=1)


def _labels_to_rgb(labels: np.ndarray, top_class: int) -> np.ndarray:
    """Draws class indices as grey levels spread over 0..255, replicated to RGB."""
    grey = np.round(labels.astype(np.float64) * (255.0 / top_class)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
