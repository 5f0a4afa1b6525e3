"""The paper's border weight map against its formula, computed here by brute force."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from unet_keras.io.masks import IGNORED
from unet_keras.training.weights import border_weight_map


def class_weights(labels: np.ndarray) -> np.ndarray:
    """w_c by counting: N / (K * N_c), K the classes present."""
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return (labels.size / (len(values) * counts))[inverse].reshape(labels.shape)


def brute_force_weights(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The formula with explicit distances from every pixel to every pixel of every cell."""
    cells, count = ndi.label(labels != 0)
    pixels = np.argwhere(np.ones(labels.shape, bool)).astype(float)
    distances = np.stack(
        [
            np.sqrt(((pixels[:, None] - np.argwhere(cells == k)[None]) ** 2).sum(-1)).min(1)
            for k in range(1, count + 1)
        ],
        axis=1,
    )
    d1, d2 = np.sort(distances, axis=1)[:, :2].T.reshape(2, *labels.shape)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return class_weights(labels) + np.where(labels == 0, border, 0.0)


def two_cells() -> np.ndarray:
    labels = np.zeros((20, 30), np.int64)
    labels[4:16, 3:12] = 1
    labels[6:14, 15:27] = 1
    return labels


@pytest.mark.parametrize("w0, sigma", [(10.0, 5.0), (7.0, 2.0)])
def test_two_cells_match_the_formula(w0, sigma) -> None:
    labels = two_cells()
    weights = border_weight_map(labels, w0, sigma)
    assert weights.dtype == np.float32 and weights.shape == labels.shape
    np.testing.assert_allclose(weights, brute_force_weights(labels, w0, sigma), atol=1e-4)
    # The gap between the cells weighs most; cell pixels carry their class weight only.
    assert np.unravel_index(weights.argmax(), labels.shape)[1] in (12, 13, 14)
    np.testing.assert_allclose(weights[labels == 1], class_weights(labels)[labels == 1])


def test_one_cell_gets_class_weights_only() -> None:
    labels = np.zeros((12, 12), np.uint8)
    labels[3:8, 2:9] = 1
    np.testing.assert_allclose(border_weight_map(labels), class_weights(labels), rtol=1e-6)


def test_no_cells_give_weight_one() -> None:
    np.testing.assert_array_equal(border_weight_map(np.zeros((5, 7), int)), 1.0)


def test_class_weights_balance_the_classes() -> None:
    labels = np.random.default_rng(0).choice(3, size=(32, 40), p=[0.6, 0.3, 0.1])
    weights = border_weight_map(labels, w0=0.0)
    totals = [weights[labels == c].sum() for c in range(3)]
    np.testing.assert_allclose(totals, labels.size / 3, rtol=1e-5)
    checkerboard = np.indices((6, 6)).sum(0) % 2
    np.testing.assert_array_equal(border_weight_map(checkerboard, w0=0.0), 1.0)


@pytest.mark.parametrize(
    "labels, kwargs, message",
    [
        (np.zeros((4, 4, 1), int), {}, r"\(H, W\)"),
        (np.zeros((4, 4)), {}, "integer class indices"),
        (np.full((4, 4), -2), {}, "class indices >= 0"),
        (np.full((4, 4), 2), {"num_classes": 2}, "outside 0..1 for num_classes=2"),
        (np.zeros((4, 4), int), {"sigma": 0.0}, "sigma > 0"),
    ],
)
def test_bad_input_is_rejected(labels, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        border_weight_map(labels, **kwargs)


def test_unlabelled_pixels_weigh_nothing_and_count_in_no_term() -> None:
    """With the right part unlabelled, the left part weighs exactly what it weighs alone:
    the class balance counts labelled pixels only, and distances reach labelled cells."""
    labels = two_cells()
    sparse = np.concatenate([labels, np.full((labels.shape[0], 9), IGNORED)], axis=1)
    sparse[2:5, -5:] = IGNORED
    weights = border_weight_map(sparse)
    assert (weights[:, labels.shape[1] :] == 0).all()
    np.testing.assert_array_equal(weights[:, : labels.shape[1]], border_weight_map(labels))


def full_image_reference(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The formula with one whole-image distance transform per cell: no cutoff anywhere."""
    cells, count = ndi.label(labels != 0)
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for k in range(1, count + 1):
        distance = ndi.distance_transform_edt(cells != k)
        d2 = np.minimum(d2, np.maximum(d1, distance))
        d1 = np.minimum(d1, distance)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return class_weights(labels) + np.where(labels == 0, border, 0.0)


@pytest.mark.slow
def test_isbi_mask_matches_the_full_reference(isbi: Path) -> None:
    from PIL import Image

    labels = (np.asarray(Image.open(isbi / "train" / "masks" / "00.png")) == 255).astype(np.int32)
    weights = border_weight_map(labels)
    assert np.isfinite(weights).all()
    np.testing.assert_allclose(weights, full_image_reference(labels, 10.0, 5.0), atol=1e-4)
    # The heaviest pixel is membrane squeezed between two cells.
    row, col = np.unravel_index(weights.argmax(), labels.shape)
    assert labels[row, col] == 0
    assert weights[row, col] > class_weights(labels)[row, col] + 8.0
    cells, _ = ndi.label(labels)
    near = cells[max(row - 2, 0) : row + 3, max(col - 2, 0) : col + 3]
    assert len(np.unique(near[near > 0])) >= 2
