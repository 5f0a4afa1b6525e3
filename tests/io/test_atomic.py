"""Atomic writes: the target holds the old or the new content, never a part."""

import os
import stat

import numpy as np
import pytest

from unet_keras.io.atomic import atomic_path
from unet_keras.io.readers import read_image, read_mask
from unet_keras.io.writers import write_image


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "model.keras"
    with atomic_path(target) as temporary:
        assert temporary.parent == target.parent and temporary.suffix == ".keras"
        temporary.write_text("new")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["model.keras"]


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "model.keras") as temporary:
            temporary.write_text("new")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "model.keras").stat().st_mode) == 0o644


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "result.png"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]


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
