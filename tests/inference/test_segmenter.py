"""unet_keras.inference.segmenter: overlap-tile prediction, blending, test-time augmentation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unet_keras.geometry import context_margin, input_size_for_output, plan_blocks, plan_tiles
from unet_keras.inference.segmenter import DIHEDRAL, Segmenter, dihedral
from unet_keras.io.sample import DataError
from unet_keras.record import ModelConfig


@pytest.fixture
def tiny_segmenter(tiny_unet):
    """Makes a Segmenter of the tiny U-Net: `tiny_segmenter(padding, depth=2, **options)`."""

    def make(padding: str, depth: int = 2, **options: object) -> Segmenter:
        config = ModelConfig(filters=4, depth=depth, padding=padding, dropout=0.0)
        return Segmenter.from_model(*tiny_unet(config, seed=3), **options)

    return make


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 image of random blobs: smooth enough that tile seams would stand out."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (height // 16 + 2, width // 16 + 2))
    image = np.kron(coarse, np.ones((16, 16)))[:height, :width]
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, 6).astype(np.uint8)[..., None]


def whole_image_prediction(segmenter: Segmenter, image: np.ndarray) -> np.ndarray:
    """The valid-padding model run once on the whole mirror-padded image."""
    depth = segmenter.model_config.depth
    margin = context_margin(depth)
    height, width = image.shape[:2]
    in_h, in_w = input_size_for_output(height, depth), input_size_for_output(width, depth)
    padded = np.pad(
        image,
        ((margin, in_h - height - margin), (margin, in_w - width - margin), (0, 0)),
        mode="reflect",
    )
    normalised = (padded.astype(np.float32) - 120.0) / 40.0
    model = segmenter._forward
    return np.asarray(model(normalised[None]))[0, :height, :width]


def test_tiled_valid_prediction_equals_whole_image(tiny_segmenter) -> None:
    # Odd sizes that take several tiles on both axes (output tiles of 36 pixels).
    segmenter = tiny_segmenter("valid", tile=76, batch_size=3)
    image = np.random.default_rng(1).integers(0, 256, (157, 211, 1), dtype=np.uint8)
    assert len(plan_tiles(157, 2, "valid", 76).starts) >= 4
    tiled = segmenter.probabilities(image)
    assert tiled.shape == (157, 211, 1) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole_image_prediction(segmenter, image), atol=1e-5)


def test_image_smaller_than_a_tile(tiny_segmenter) -> None:
    segmenter = tiny_segmenter("valid")
    image = np.random.default_rng(2).integers(0, 256, (5, 9, 1), dtype=np.uint8)
    np.testing.assert_allclose(
        segmenter.probabilities(image), whole_image_prediction(segmenter, image), atol=1e-5
    )


def seam_ratio(probabilities: np.ndarray, borders: list[int]) -> float:
    """Mean jump between neighbouring columns at `borders`, over the mean jump anywhere."""
    jumps = np.abs(np.diff(probabilities[..., 0], axis=1)).mean(axis=0)
    return float(jumps[[b - 1 for b in borders]].mean() / jumps.mean())


def test_same_padding_blending_leaves_no_seam(tiny_segmenter) -> None:
    image = smooth_image(96, 320)
    blended = tiny_segmenter("same", tile=64, overlap=32).probabilities(image)
    naive = tiny_segmenter("same", tile=64, overlap=0).probabilities(image)
    whole = tiny_segmenter("same", tile=320, overlap=0).probabilities(image)
    naive_borders = [64, 128, 192, 256]
    # Tiling without overlap shows its tile edges; blended tiling does not.
    assert seam_ratio(naive, naive_borders) > 1.5
    assert seam_ratio(whole, naive_borders) < 1.2
    cols = plan_tiles(320, 2, "same", 64, 32)
    assert 0 < np.diff(cols.starts).max() < 64
    blended_edges = [s for s in cols.starts if 0 < s < 320] + [
        s + 64 for s in cols.starts if 0 < s + 64 < 320
    ]
    assert seam_ratio(blended, blended_edges) < 1.2


def test_dihedral_gives_the_8_symmetries_as_views() -> None:
    image = np.arange(3 * 5).reshape(3, 5, 1)
    views = [dihedral(image, turns, flip) for turns, flip in DIHEDRAL]
    assert len({v.tobytes() for v in views}) == 8
    assert all(np.shares_memory(v, image) for v in views)


def test_tta_is_the_mean_of_transformed_predictions(tiny_segmenter) -> None:
    image = np.random.default_rng(4).integers(0, 256, (90, 70, 1), dtype=np.uint8)
    plain = tiny_segmenter("valid", tile=76)
    expected = np.zeros((90, 70, 1), np.float32)
    for turns, flip in DIHEDRAL:
        transformed = np.ascontiguousarray(dihedral(image, turns, flip))
        # Writing through the same view undoes the transform.
        dihedral(expected, turns, flip)[...] += plain.probabilities(transformed) / 8
    augmented = tiny_segmenter("valid", tile=76, tta=True).probabilities(image)
    np.testing.assert_allclose(augmented, expected, atol=1e-5)
    assert np.abs(augmented - plain.probabilities(image)).max() > 1e-3


@pytest.mark.parametrize(
    ("symmetries", "expected"),
    [
        ("flips", [(0, False), (0, True)]),
        ("rotations", [(0, False), (1, False), (2, False), (3, False)]),
    ],
)
def test_tta_averages_only_the_symmetries_the_model_was_trained_with(
    tiny_unet, symmetries, expected
) -> None:
    model, record = tiny_unet(ModelConfig(filters=4, depth=2, dropout=0.0), seed=3)
    record = dataclasses.replace(record, symmetries=symmetries)
    image = np.random.default_rng(5).integers(0, 256, (64, 48, 1), dtype=np.uint8)
    plain = Segmenter.from_model(model, record, tile=76)
    mean = np.zeros((64, 48, 1), np.float32)
    for turns, flip in expected:
        transformed = np.ascontiguousarray(dihedral(image, turns, flip))
        dihedral(mean, turns, flip)[...] += plain.probabilities(transformed) / len(expected)
    augmented = Segmenter.from_model(model, record, tile=76, tta=True).probabilities(image)
    np.testing.assert_allclose(augmented, mean, atol=1e-5)


def test_tta_of_a_model_trained_without_flips_or_rotations_is_refused(tiny_unet) -> None:
    model, record = tiny_unet(ModelConfig(filters=4, depth=2, dropout=0.0), seed=3)
    record = dataclasses.replace(record, symmetries="none")
    with pytest.raises(ValueError, match="--tta: the model was trained without flips or rot"):
        Segmenter.from_model(model, record, tta=True)
    assert Segmenter.from_model(model, record).symmetries == DIHEDRAL[:1]


def test_labels_and_mask_follow_the_training_convention(tiny_segmenter) -> None:
    segmenter = tiny_segmenter("valid", threshold=0.4)
    probabilities = np.array([[[0.1], [0.4]], [[0.9], [0.39]]], np.float32)
    labels = segmenter.labels(probabilities)
    np.testing.assert_array_equal(labels, [[0, 1], [1, 0]])
    mask = segmenter.mask(labels)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[0, 255], [255, 0]])


def test_bad_images_and_settings_are_named(tiny_segmenter) -> None:
    segmenter = tiny_segmenter("valid")
    with pytest.raises(DataError, match=r"scan\.png: shape \(8, 8, 3\).*\(H, W, 1\)"):
        segmenter.probabilities(np.zeros((8, 8, 3), np.uint8), source="scan.png")
    with pytest.raises(DataError, match=r"scan\.tif: dtype uint16.*uint8"):
        segmenter.probabilities(np.zeros((8, 8, 1), np.uint16), source="scan.tif")
    with pytest.raises(ValueError, match="nearest workable: 68 or 72"):
        tiny_segmenter("valid", tile=70)  # depth 2: every 4th size
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny_segmenter("same", tile=30)
    with pytest.raises(ValueError, match="batch_size"):
        tiny_segmenter("valid", batch_size=0)


@pytest.mark.parametrize(("padding", "tile"), [("valid", 76), ("same", 64)])
def test_regions_predicted_apart_equal_the_whole_image_bit_for_bit(tiny_segmenter, padding, tile):
    # Batches of 3 tiles: a region's tiles are batched with other tiles than in the whole
    # image, which must not change a single bit.
    segmenter = tiny_segmenter(padding, tile=tile, batch_size=3)
    image = np.random.default_rng(4).integers(0, 256, (200, 171, 1), dtype=np.uint8)
    whole = segmenter.probabilities(image)
    reads = []

    def read(top: int, bottom: int, left: int, right: int) -> np.ndarray:
        reads.append((bottom - top) * (right - left))
        return image[top:bottom, left:right]

    parts = np.full_like(whole, np.nan)
    for rows in plan_blocks(200, 16, 48):
        for cols in plan_blocks(171, 16, 48):
            region = segmenter.region_probabilities(read, (200, 171), rows, cols)
            parts[rows[0] : rows[1], cols[0] : cols[1]] = region
    assert np.array_equal(parts, whole)
    assert max(reads) < image.shape[0] * image.shape[1]  # never the whole image


def test_region_prediction_refuses_test_time_augmentation(tiny_segmenter) -> None:
    segmenter = tiny_segmenter("valid", tta=True)
    with pytest.raises(ValueError, match="--tta"):
        segmenter.region_probabilities(lambda *_: None, (64, 64), (0, 16), (0, 16), "v.zarr")
