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
    is_finished,
    is_zarr,
    mark_finished,
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
    images = [
        OutputImage("", "uint8"),
        OutputImage("labels/mask", "uint8", label=True, classes=(0, 255)),
        OutputImage("probabilities", "float32", 2),
    ]
    settings = {"model": "m.keras", "threshold": 0.5}
    out = tmp_path / "out.zarr"
    assert create_output(out, source, images, (2, 3, 4), settings) is False
    stored = zarr.open_group(out, mode="r")
    # Rows and columns halved until they fit a chunk: 40x50, 20x25, 10x13.
    assert [stored[f"labels/mask/{k}"].shape for k in "012"] == [
        (2, 40, 50),
        (2, 20, 25),
        (2, 10, 13),
    ]
    assert stored["probabilities/2"].shape == (2, 2, 10, 13) and "3" not in stored["probabilities"]
    assert stored["labels/mask/0"].chunks == (1, 16, 16) and stored["0"].dtype == np.uint8
    assert stored[".unet_keras/progress"].shape == (2, 3, 4)
    ome = stored["probabilities"].attrs["ome"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["c", "z", "y", "x"]
    scales = [
        d["coordinateTransformations"][0]["scale"] for d in ome["multiscales"][0]["datasets"]
    ]
    assert scales == [[1, 1, 1, 1], [1, 1, 2, 2], [1, 1, 4, 4]]
    assert stored["labels"].attrs["ome"] == {"version": "0.5", "labels": ["mask"]}
    label = stored["labels/mask"].attrs["ome"]["image-label"]
    assert label["source"] == {"image": "../../"}
    assert [c["label-value"] for c in label["colors"]] == [0, 255]
    # The run's records are not in the OME-Zarr groups' attributes.
    assert set(stored.attrs.asdict()) == {"ome"}
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
    records = stored[".unet_keras"].attrs
    assert json.loads(json.dumps(records["settings"])) == settings
    assert np.all(stored[".unet_keras/progress"][...] == 0)
    assert not is_finished(out, "labels/objects")
    mark_finished(out, "labels/objects")
    assert is_finished(out, "labels/objects")


def test_a_store_of_the_layout_before_the_records_group_is_refused_by_name(tmp_path):
    create_volume(tmp_path / "in.zarr", (40, 50), (16, 16))
    source = open_volume(tmp_path / "in.zarr")
    before = zarr.open_group(tmp_path / "old.zarr", mode="w")
    before.attrs["unet_keras"] = {"model": "m.keras"}
    before.create_array("progress", shape=(1, 3, 4), dtype="uint8")
    with pytest.raises(DataError, match=r"old\.zarr: a prediction by an earlier unet-keras"):
        create_output(tmp_path / "old.zarr", source, [], (1, 3, 4), {"model": "m.keras"})


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_outputs_stay_readable_as_inputs(tmp_path, zarr_format):
    create_volume(tmp_path / "in.zarr", (2, 40, 50), (1, 16, 16), "uint8", zarr_format)
    source = open_volume(tmp_path / "in.zarr")
    images = [OutputImage("", "uint8"), OutputImage("labels/mask", "uint8", label=True)]
    create_output(tmp_path / "out.zarr", source, images, (1, 1, 1), {})
    for name, level in (("", "0"), ("/labels/mask", "labels/mask/0")):
        volume = open_volume(f"{tmp_path}/out.zarr{name}")
        assert (volume.path, volume.shape, volume.zarr_format) == (level, (2, 40, 50), zarr_format)


def test_pyramid_levels_are_means_or_nearest_pixels_written_block_by_block(tmp_path, monkeypatch):
    from unet_keras.io import pyramid

    pixels = np.random.default_rng(0).integers(0, 256, (2, 45, 39), dtype=np.uint8)
    fine = create_volume(tmp_path / "a.zarr/fine", pixels.shape, (1, 8, 8))
    fine[...] = pixels
    padded = np.pad(pixels.astype(np.float64), [(0, 0), (0, 1), (0, 1)], mode="edge")
    means = np.rint(padded.reshape(2, 23, 2, 20, 2).mean(axis=(2, 4))).astype(np.uint8)
    monkeypatch.setattr(pyramid, "BLOCK", 8)  # many blocks, odd last ones
    for nearest, expected in ((False, means), (True, pixels[:, ::2, ::2])):
        coarse = create_volume(tmp_path / f"a.zarr/{nearest}", (2, 23, 20), (1, 8, 8))
        written = pyramid.blocks(coarse)
        assert len(written) == 2 * 3 * 3  # a block a section, 8 x 8: every block a task
        for block in written:
            pyramid.halve_block(str(tmp_path / "a.zarr"), "", "fine", str(nearest), nearest, block)
        assert np.array_equal(coarse[...], expected)
    probabilities = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
    assert pyramid.downsample(probabilities, False, np.float32).tolist() == [[0.4375]]
