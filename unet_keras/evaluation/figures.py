"""Evaluation figures: image | truth | prediction | errors, and the objects of each."""

from __future__ import annotations

import numpy as np

from unet_keras.inference.overlays import image_to_rgb
from unet_keras.io.masks import IGNORED

FIGURE_SEPARATOR = 4
FALSE_POSITIVE_COLOUR = (255, 0, 255)  # magenta: object predicted on truth boundary
FALSE_NEGATIVE_COLOUR = (0, 255, 0)  # green: boundary predicted inside a truth object
WRONG_CLASS_COLOUR = (255, 255, 0)  # yellow: both objects, different classes (multi-class)
UNLABELLED_COLOUR = (64, 96, 160)  # blue-grey: truth pixels that carry no label


def evaluation_figure(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Draws image | truth | prediction | errors side by side as one RGB uint8 array.

    The image is scaled to 0..255 by its own min and max. Labels are grey levels, class k at
    round(255 k / K) where K is the largest class in either label image, so a class has the
    same grey in both panels. The error panel is the image dimmed, with
    `FALSE_POSITIVE_COLOUR` where an object is predicted on truth boundary (class 0),
    `FALSE_NEGATIVE_COLOUR` where boundary is predicted inside a truth object, and
    `WRONG_CLASS_COLOUR` where both are objects of different classes. Unlabelled truth
    pixels (`IGNORED`) are `UNLABELLED_COLOUR` in the truth panel and count as no error.
    Panels are separated by `FIGURE_SEPARATOR` white columns: the result is
    (H, 4 W + 3 FIGURE_SEPARATOR, 3).
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
        lowest = IGNORED if name == "truth" else 0
        if labels.size and labels.min() < lowest:
            raise ValueError(f"{name} holds class index {labels.min()}, below {lowest}")

    grey = image_to_rgb(image)
    top_class = max(int(truth.max(initial=0)), int(predicted.max(initial=0)), 1)
    errors = (grey // 2).astype(np.uint8)  # dimmed so the error colours stand out
    unlabelled = truth == IGNORED
    truth_object, predicted_object = truth > 0, predicted > 0
    errors[predicted_object & ~truth_object & ~unlabelled] = FALSE_POSITIVE_COLOUR
    errors[truth_object & ~predicted_object] = FALSE_NEGATIVE_COLOUR
    errors[truth_object & predicted_object & (truth != predicted)] = WRONG_CLASS_COLOUR
    truth_panel = _labels_to_rgb(np.maximum(truth, 0), top_class)
    truth_panel[unlabelled] = UNLABELLED_COLOUR
    return _side_by_side([grey, truth_panel, _labels_to_rgb(predicted, top_class), errors])


def instance_figure(
    image: np.ndarray, truth_objects: np.ndarray, predicted_objects: np.ndarray
) -> np.ndarray:
    """Draws image | truth objects | predicted objects as one RGB uint8 array.

    Each object is a colour of its own (random, but the same for the same id every time)
    laid over the image at half strength; id 0 (boundary) shows the image. Panels are
    separated as in `evaluation_figure`: (H, 3 W + 2 FIGURE_SEPARATOR, 3).
    """
    image = np.asarray(image)
    truth_objects, predicted_objects = np.asarray(truth_objects), np.asarray(predicted_objects)
    if truth_objects.shape != predicted_objects.shape or truth_objects.ndim != 2:
        raise ValueError(
            f"truth and predicted objects must be (H, W) id images of one shape, got "
            f"{truth_objects.shape} and {predicted_objects.shape}"
        )
    if image.shape[:2] != truth_objects.shape:
        raise ValueError(f"image {image.shape} and objects {truth_objects.shape} differ in size")
    grey = image_to_rgb(image)
    panels = [grey]
    for objects in (truth_objects, predicted_objects):
        ids = objects.astype(np.int64)
        # A fixed pseudo-random colour per id, bright enough to read over EM grey.
        colours = np.stack([(ids * factor + offset) % 200 + 55 for factor, offset in
                            ((2654435761, 17), (40503, 91), (69069, 123))], -1)  # fmt: skip
        blended = (grey.astype(np.uint16) + colours) // 2
        panels.append(np.where(ids[..., None] > 0, blended, grey).astype(np.uint8))
    return _side_by_side(panels)


def _side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """Joins equal-height RGB panels with `FIGURE_SEPARATOR` white columns between them."""
    separator = np.full((panels[0].shape[0], FIGURE_SEPARATOR, 3), 255, np.uint8)
    pieces = []
    for panel in panels:
        pieces.extend((panel, separator))
    return np.concatenate(pieces[:-1], axis=1)


def _labels_to_rgb(labels: np.ndarray, top_class: int) -> np.ndarray:
    """Draws class indices as grey levels spread over 0..255, replicated to RGB."""
    grey = np.round(labels.astype(np.float64) * (255.0 / top_class)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
