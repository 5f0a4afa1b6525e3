"""unet_keras.io.ome_zarr: Zarr and OME-Zarr volumes described, outputs created or resumed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from unet_keras.io.ome_zarr import (
    OutputImage,
    create_output,
    create_volume,
    is_zarr,
    open_volume,
    split_store,
)
from unet_keras.io.sample import DataError


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_arrays_and_ome_images_are_described_by_their_axes(tmp_path, zarr_format):
    plain = create_volume(tmp_path / "a.zarr/raw", (3, 40, 50), (1, 16, 16), "uint16", zarr_format)
    plain[:] = 7
    volume = open_volume(tmp_path / "a.zarr/raw")
    assert (volume.shape, volume.chunks, volume.dtype) == ((3, 40, 50), (1, 16, 16), "uint16")
    assert volume.has_sections and volume.zarr_format == zarr_format
    assert volume.read(volume.open(), 2, (0, 5), (3, 9)).shape == (5, 6, 1)
    assert is_zarr(tmp_path / "a.zarr/raw") and not is_zarr(tmp_path)
    create_volume(tmp_path / "b.zarr", (40, 50), (16, 16), "uint8", zarr_format)
    flat = open_volume(tmp_path / "b.zarr")
    assert flat.shape == (1, 40, 50) and not flat.has_sections
    ome = create_volume(
        tmp_path / "c.zarr/em", (2, 40, 50), (1, 32, 32), "uint8", zarr_format, True, (40, 4, 4)
    )
    ome[:] = 1
    image = open_volume(tmp_path / "c.zarr/em")  # the image group: its level 0
    assert image.path == "em/0" and image.scale == (40, 4, 4)
    assert [axis["name"] for axis in image.axes] == ["z", "y", "x"]


def test_ome_axes_of_one_element_are_left_out_and_others_refused(tmp_path):
    group = zarr.open_group(tmp_path / "t.zarr", mode="w", zarr_format=2)
    axes = [{"name": n, "type": t} for n, t in (("c", "channel"), ("y", "space"), ("x", "space"))]
    level = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 2]}]}
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [level]}]
    group.create_array("0", shape=(1, 30, 20), chunks=(1, 16, 16), dtype="uint8")
    volume = open_volume(tmp_path / "t.zarr")
    assert volume.layout == (0, "y", "x") and volume.shape == (1, 30, 20)
    assert volume.scale == (2, 2)
    group.create_array("1", shape=(2, 30, 20), chunks=(1, 16, 16), dtype="uint8")
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": axes, "datasets": [{**level, "path": "1"}]}
    ]
    with pytest.raises(DataError, match="axis 'c' has 2 elements"):
        open_volume(tmp_path / "t.zarr")


def test_bad_volumes_are_named_with_what_was_expected(tmp_path):
    with pytest.raises(DataError, match="no Zarr array or group"):
        open_volume(tmp_path / "missing.zarr")
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("raw", shape=(8, 8), dtype="uint8")
    with pytest.raises(
        DataError, match=r"name one of its arrays as .*g.zarr/ARRAY \(arrays: raw\)"
    ):
        open_volume(tmp_path / "g.zarr")
    group.create_array("cube", shape=(2, 2, 8, 8), dtype="uint8")
    with pytest.raises(DataError, match="4-dimensional array; volumes are"):
        open_volume(tmp_path / "g.zarr/cube")
    assert split_store(tmp_path / "g.zarr/a/b") == (tmp_path / "g.zarr", "a/b")


def test_outputs_are_created_whole_resumed_only_for_the_same_settings(tmp_path):
    create_volume(tmp_path / "in.zarr", (2, 40, 50), (1, 16, 16))
    source = open_volume(tmp_path / "in.zarr")
    images = [OutputImage("mask", "uint8"), OutputImage("probabilities", "float32", 2)]
    settings = {"model": "m.keras", "threshold": 0.5}
    out = tmp_path / "out.zarr"
    assert create_output(out, source, images, (2, 3, 4), settings) is False
    stored = zarr.open_group(out, mode="r")
    assert stored["probabilities/0"].shape == (2, 2, 40, 50)
    assert stored["mask/0"].chunks == (1, 16, 16) and stored["progress"].shape == (2, 3, 4)
    axes = stored["probabilities"].attrs["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["c", "z", "y", "x"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert create_output(out, source, images, (2, 3, 4), settings) is True
    with pytest.raises(DataError, match="other threshold"):
        create_output(out, source, images, (2, 3, 4), {**settings, "threshold": 0.3})
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(foreign, mode="w")
    with pytest.raises(DataError, match="not a unet-keras prediction; it is never overwritten"):
        create_output(foreign, source, images, (2, 3, 4), settings)
    with pytest.raises(DataError, match="inside or around the input"):
        create_output(tmp_path / "in.zarr/out.zarr", source, images, (2, 3, 4), settings)
    with pytest.raises(DataError, match=r"store named \*\.zarr"):
        create_output(tmp_path / "out", source, images, (2, 3, 4), settings)
    assert json.loads(json.dumps(stored.attrs["unet_keras"])) == settings
    assert np.all(stored["progress"][...] == 0)
