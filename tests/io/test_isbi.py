"""The loaders on the real ISBI 2012 data, as folders and as the challenge's TIFF stacks."""

import numpy as np
import pytest
import tifffile

from unet_keras.io.masks import infer_mask_config, mask_to_labels
from unet_keras.io.readers import load_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def train(isbi):
    return load_dataset(isbi / "train", require_masks=True)


def test_isbi_train_folder_has_24_pairs_of_512_uint8(train):
    assert [s.name for s in train] == [f"{i:02d}.png" for i in range(24)]
    for sample in train:
        assert sample.image.shape == (512, 512, 1) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (512, 512)
        assert set(np.unique(sample.mask).tolist()) == {0, 255}


def test_isbi_test_folder_is_unlabelled(isbi):
    samples = load_dataset(isbi / "test")
    assert len(samples) == 30 and all(s.mask is None for s in samples)


def test_isbi_masks_infer_cells_white_as_foreground(train):
    config = infer_mask_config(s.mask for s in train)
    assert config.class_values == (0, 255)  # 255 = cell interior = class 1
    labels = mask_to_labels(train[0].mask, config)
    assert 0.6 < labels.mean() < 0.9  # cells are the majority, membranes about 22 %


def test_isbi_as_challenge_stacks_gives_the_same_arrays(train, tmp_path):
    tifffile.imwrite(
        tmp_path / "train-volume.tif",
        np.stack([s.image[..., 0] for s in train]),
        photometric="minisblack",
    )
    tifffile.imwrite(
        tmp_path / "train-labels.tif", np.stack([s.mask for s in train]), photometric="minisblack"
    )
    stacked = load_dataset(tmp_path / "train-volume.tif", require_masks=True)
    assert [s.name for s in stacked] == [f"train-volume.tif[{i:02d}]" for i in range(24)]
    for from_stack, from_png in zip(stacked, train, strict=True):
        assert from_stack.image.dtype == from_png.image.dtype
        np.testing.assert_array_equal(from_stack.image, from_png.image)
        np.testing.assert_array_equal(from_stack.mask, from_png.mask)
