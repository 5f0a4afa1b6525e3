"""Mask values <-> class indices, and inferring the MaskConfig of a set of masks."""

import numpy as np
import pytest

from unet_keras.io.masks import IGNORED, infer_mask_config, labels_to_mask, mask_to_labels
from unet_keras.io.sample import DataError
from unet_keras.record import MaskConfig


def test_mask_to_labels_follows_class_value_order():
    mask = np.array([[0, 255], [255, 0]], np.uint8)
    np.testing.assert_array_equal(mask_to_labels(mask, MaskConfig((0, 255))), [[0, 1], [1, 0]])
    inverted = mask_to_labels(mask, MaskConfig((255, 0)))
    assert inverted.dtype == np.int32
    np.testing.assert_array_equal(inverted, [[1, 0], [0, 1]])


@pytest.mark.parametrize(
    ("class_values", "dtype"),
    [((0, 255), np.uint8), ((255, 0), np.uint8), ((0, 1, 2, 7), np.uint8), ((0, 1000), np.uint16)],
)
def test_labels_round_trip_through_masks(class_values, dtype):
    config = MaskConfig(class_values)
    labels = np.random.default_rng(0).integers(0, config.num_classes, (5, 7)).astype(np.int32)
    mask = labels_to_mask(labels, config, dtype)
    assert mask.dtype == dtype
    assert set(np.unique(mask).tolist()) <= set(class_values)
    np.testing.assert_array_equal(mask_to_labels(mask, config), labels)


def test_threshold_accepts_lossy_binary_masks():
    mask = np.array([0, 3, 127, 128, 250, 255], np.uint8)
    np.testing.assert_array_equal(
        mask_to_labels(mask, MaskConfig((0, 255), threshold=128)), [0, 0, 0, 1, 1, 1]
    )
    # The threshold splits by value; the larger value keeps its class whatever its index.
    np.testing.assert_array_equal(
        mask_to_labels(mask, MaskConfig((255, 0), threshold=128)), [1, 1, 1, 0, 0, 0]
    )


def test_lossy_binary_mask_error_names_values_and_suggests_threshold():
    mask = np.array([0, 0, 255, 254, 254, 1], np.uint8)
    with pytest.raises(DataError) as error:
        mask_to_labels(mask, MaskConfig((0, 255)), source="masks/07.png")
    message = str(error.value)
    assert "masks/07.png" in message
    assert "254 (2 px), 1 (1 px)" in message
    assert "(0, 255)" in message and "threshold=127.5" in message


def test_foreign_values_error_points_to_class_values():
    mask = np.array([0, 1, 2], np.uint8)
    with pytest.raises(DataError, match=r"m\.png: mask values 2 \(1 px\) fit none") as error:
        mask_to_labels(mask, MaskConfig((0, 1)), source="m.png")
    assert "threshold" not in str(error.value)
    assert "infer_mask_config" in str(error.value)


def test_labels_to_mask_rejects_bad_labels_and_narrow_dtypes():
    config = MaskConfig((0, 1000))
    with pytest.raises(ValueError, match=r"indices 0\.\.2, outside 0\.\.1"):
        labels_to_mask(np.array([0, 2]), config, np.uint16)
    with pytest.raises(ValueError, match="integer class indices"):
        labels_to_mask(np.array([0.0, 1.0]), config, np.uint16)
    with pytest.raises(ValueError, match="do not fit dtype uint8"):
        labels_to_mask(np.array([0, 1]), config)


def test_infer_mask_config_majority_value_is_foreground_by_default():
    cells_white = np.full((8, 8), 255, np.uint8)
    cells_white[::4] = 0  # thin membranes: the minority
    assert infer_mask_config([cells_white]).class_values == (0, 255)
    assert infer_mask_config([255 - cells_white]).class_values == (255, 0)


def test_infer_mask_config_foreground_can_be_named():
    nuclei = np.zeros((8, 8), np.uint8)
    nuclei[2:4, 2:4] = 255  # sparse objects: the minority
    assert infer_mask_config([nuclei], foreground="bright").class_values == (0, 255)
    assert infer_mask_config([nuclei], foreground="dark").class_values == (255, 0)
    with pytest.raises(ValueError, match="foreground must be one of"):
        infer_mask_config([nuclei], foreground="white")


def test_infer_mask_config_multi_class_and_counts_across_masks():
    masks = [np.array([[0, 2]], np.uint8), np.array([[5, 5]], np.uint8)]
    assert infer_mask_config(masks).class_values == (0, 2, 5)
    with pytest.raises(ValueError, match="applies to binary masks"):
        infer_mask_config(masks, foreground="dark")
    # 255 wins on the total count although it is the minority of the first mask.
    masks = [np.array([[0, 0, 255]], np.uint8), np.array([[255, 255, 255]], np.uint8)]
    assert infer_mask_config(masks).class_values == (0, 255)


def test_infer_mask_config_rejects_unusable_masks():
    with pytest.raises(DataError, match="1 distinct value"):
        infer_mask_config([np.zeros((4, 4), np.uint8)])
    lossy = np.arange(256, dtype=np.uint8).reshape(16, 16)
    with pytest.raises(DataError, match=r"256 distinct values .*threshold=127\.5"):
        infer_mask_config([lossy])
    with pytest.raises(DataError, match="whole-number"):
        infer_mask_config([np.array([0.0, 0.5], np.float32)])


def test_ignore_value_marks_unlabelled_pixels():
    config = MaskConfig((0, 255), ignore_value=128)
    mask = np.array([[0, 128, 255], [128, 255, 0]], np.uint8)
    labels = mask_to_labels(mask, config)
    np.testing.assert_array_equal(labels, [[0, IGNORED, 1], [IGNORED, 1, 0]])
    lossy = MaskConfig((0, 255), threshold=100, ignore_value=7)
    np.testing.assert_array_equal(mask_to_labels(np.array([[7, 99, 101]]), lossy), [[-1, 0, 1]])
    with pytest.raises(DataError, match="mask values 64"):
        mask_to_labels(np.array([[64, 128]], np.uint8), config, "m.png")
    with pytest.raises(ValueError, match="ignore_value 255 is also a class value"):
        MaskConfig((0, 255), ignore_value=255)


def test_inferred_convention_leaves_the_ignore_value_out():
    # Mostly unlabelled (128); of the labelled pixels, 255 is the majority: the cells.
    mask = np.array([[128] * 8 + [255] * 3 + [0]], np.uint8)
    config = infer_mask_config([mask], ignore_value=128)
    assert config == MaskConfig((0, 255), ignore_value=128)
