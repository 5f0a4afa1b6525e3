"""unet_keras.evaluation.figures: image | truth | prediction | errors."""

from __future__ import annotations

import numpy as np
import pytest

from unet_keras.evaluation.figures import (
    FALSE_NEGATIVE_COLOUR,
    FALSE_POSITIVE_COLOUR,
    FIGURE_SEPARATOR,
    evaluation_figure,
)


def test_evaluation_figure_lays_out_panels_and_colours_errors_exactly():
    height, width = 5, 6
    image = np.linspace(-1.0, 3.0, height * width).reshape(height, width)
    truth = np.zeros((height, width), np.int32)
    truth[1:4, 1:5] = 1
    predicted = truth.copy()
    predicted[0, 0] = 1  # false positive: object on truth boundary
    predicted[2, 2] = 0  # false negative: boundary inside a truth object
    figure = evaluation_figure(image, truth, predicted)
    assert figure.shape == (height, 4 * width + 3 * FIGURE_SEPARATOR, 3)
    assert figure.dtype == np.uint8
    step = width + FIGURE_SEPARATOR
    panels = [figure[:, i * step : i * step + width] for i in range(4)]
    for i in range(3):
        assert np.all(figure[:, i * step + width : (i + 1) * step] == 255)
    grey = panels[0]
    assert grey[0, 0].tolist() == [0, 0, 0] and grey[-1, -1].tolist() == [255, 255, 255]
    assert np.all(grey == grey[..., :1])  # grey replicated to RGB
    assert np.array_equal(panels[1][..., 0], truth * 255)
    assert np.array_equal(panels[2][..., 0], predicted * 255)
    errors = panels[3]
    magenta = np.all(errors == FALSE_POSITIVE_COLOUR, axis=-1)
    green = np.all(errors == FALSE_NEGATIVE_COLOUR, axis=-1)
    assert np.argwhere(magenta).tolist() == [[0, 0]]
    assert np.argwhere(green).tolist() == [[2, 2]]
    rest = ~(magenta | green)
    assert np.array_equal(errors[rest], grey[rest] // 2)  # dimmed image elsewhere


def test_evaluation_figure_accepts_colour_images_and_constant_images():
    labels = np.zeros((3, 4), np.int32)
    figure = evaluation_figure(np.full((3, 4, 3), 7, np.uint16), labels, labels)
    assert figure.shape == (3, 16 + 3 * FIGURE_SEPARATOR, 3)
    assert np.all(figure[:, :4] == 0)
    with pytest.raises(ValueError, match="image must be"):
        evaluation_figure(np.zeros((3, 5)), labels, labels)
