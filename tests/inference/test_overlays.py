"""Images for people: outlines drawn over the image."""

import numpy as np

from unet_keras.inference.overlays import boundary_overlay


def test_boundary_overlay_outlines_objects() -> None:
    labels = np.zeros((6, 6), np.int32)
    labels[1:5, 1:5] = 1
    overlay = boundary_overlay(np.full((6, 6, 1), 7, np.uint8), labels)
    outline = np.all(overlay == (255, 48, 48), axis=-1)
    expected = np.zeros((6, 6), bool)
    expected[1:5, 1:5] = True
    expected[2:4, 2:4] = False
    np.testing.assert_array_equal(outline, expected)
