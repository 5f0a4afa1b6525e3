"""Writing images, masks and stacks: PNG or TIFF by suffix, atomically."""

import numpy as np
import pytest

from unet_keras.io.readers import load_dataset, read_image, read_mask
from unet_keras.io.writers import write_image, write_stack


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("grey8.png", np.arange(48, dtype=np.uint8).reshape(6, 8)),
        ("grey16.png", (np.arange(48, dtype=np.uint16) * 1000).reshape(6, 8)),
        ("rgb.png", np.arange(144, dtype=np.uint8).reshape(6, 8, 3)),
        ("float.tif", np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)),
    ],
)
def test_write_image_round_trips(tmp_path, name, array):
    write_image(tmp_path / name, array)
    back = read_image(tmp_path / name)
    np.testing.assert_array_equal(back.reshape(array.shape), array)
    assert back.dtype == array.dtype


def test_write_image_names_the_file_when_the_format_cannot_hold_the_data(tmp_path):
    with pytest.raises(ValueError, match=r"probabilities\.png: PNG holds"):
        write_image(tmp_path / "probabilities.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"mask\.jpg: write \.png"):
        write_image(tmp_path / "mask.jpg", np.zeros((4, 4), np.uint8))
    assert not list(tmp_path.iterdir())


def test_mask_written_as_png_reads_back_as_a_mask(tmp_path):
    mask = np.where(np.eye(5, dtype=bool), 0, 255).astype(np.uint8)
    write_image(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)


def test_stacks_are_multipage_tiffs_that_read_back(tmp_path):
    pages = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    write_stack(tmp_path / "v.tif", pages)
    samples = load_dataset(tmp_path / "v.tif")
    assert [s.name for s in samples] == ["v.tif[00]", "v.tif[01]", "v.tif[02]"]
    np.testing.assert_array_equal(np.stack([s.image[..., 0] for s in samples]), pages)
    with pytest.raises(ValueError, match=r"v\.png: stacks are written as \.tif"):
        write_stack(tmp_path / "v.png", pages)
