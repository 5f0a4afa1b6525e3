"""The embedded synthetic EM-like data set: deterministic, exact ISBI-convention masks."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from unet_keras.io.sample import Sample
from unet_keras.io.synthetic import synthetic_em_images


@pytest.fixture(scope="module")
def full_size() -> list[Sample]:
    return synthetic_em_images(count=3)


def test_same_seed_gives_identical_bytes() -> None:
    first, second = synthetic_em_images(2, (64, 96), seed=7), synthetic_em_images(2, (64, 96), 7)
    for a, b in zip(first, second, strict=True):
        assert a.name == b.name
        assert a.image.tobytes() == b.image.tobytes()
        assert a.mask.tobytes() == b.mask.tobytes()


def test_images_differ_by_index_and_seed_but_not_by_count() -> None:
    zero, one = synthetic_em_images(2, (64, 64))
    assert not np.array_equal(zero.image, one.image)
    assert not np.array_equal(zero.mask, one.mask)
    assert not np.array_equal(synthetic_em_images(1, (64, 64), seed=1)[0].image, zero.image)
    # Image i does not depend on how many images were asked for.
    assert np.array_equal(synthetic_em_images(3, (64, 64))[1].image, one.image)


def test_shapes_dtypes_and_names() -> None:
    samples = synthetic_em_images(2, (64, 80))
    assert [s.name for s in samples] == ["synthetic_00", "synthetic_01"]
    for sample in samples:
        assert isinstance(sample, Sample)
        assert sample.image.shape == (64, 80, 1) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (64, 80) and sample.mask.dtype == np.uint8


def test_masks_follow_isbi_convention_with_a_membrane_minority(full_size) -> None:
    for sample in full_size:
        assert set(np.unique(sample.mask)) == {0, 255}
        assert 0.12 < np.mean(sample.mask == 0) < 0.30


def test_membranes_are_darker_than_cell_interiors(full_size) -> None:
    for sample in full_size:
        image = sample.image[..., 0].astype(float)
        membrane, interior = image[sample.mask == 0].mean(), image[sample.mask == 255].mean()
        assert 40 <= membrane <= 110 and 140 <= interior <= 200
        assert interior - membrane > 50


def test_membranes_separate_many_cells(full_size) -> None:
    for sample in full_size:
        cells, count = ndi.label(sample.mask == 255)
        assert count > 100
        assert np.median(np.bincount(cells.ravel())[1:]) > 200


@pytest.mark.parametrize("count, size", [(-1, (64, 64)), (1, (32, 64)), (1, (64,))])
def test_bad_arguments_are_rejected(count, size) -> None:
    with pytest.raises(ValueError, match="synthetic_em_images needs"):
        synthetic_em_images(count, size)
