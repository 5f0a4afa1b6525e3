"""Malformed image files: a clear DataError naming the file, never another exception."""

from __future__ import annotations

import io

import numpy as np
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from unet_keras.io.readers import read_image, read_mask
from unet_keras.io.sample import DataError


def _encoded(kind: str) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (24, 20), dtype=np.uint8)
    buffer = io.BytesIO()
    if kind == "png":
        Image.fromarray(image).save(buffer, format="PNG")
    else:
        tifffile.imwrite(buffer, image, compression="zlib")
    return buffer.getvalue()


VALID = {"png": _encoded("png"), "tif": _encoded("tif")}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["png", "tif"]),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8),
    cut=st.none() | st.integers(0, 400),
)
def test_corrupted_files_give_a_data_error_naming_the_file(tmp_path_factory, kind, edits, cut):
    data = bytearray(VALID[kind])
    for place, value in edits:
        if place < len(data):
            data[place] = value
    if cut is not None:
        data = data[:cut]
    path = tmp_path_factory.mktemp("fuzz") / f"image.{kind}"
    path.write_bytes(bytes(data))
    for read in (read_image, read_mask):
        try:
            array = read(path)
        except DataError as error:
            assert str(path) in str(error)
        else:
            assert array.size > 0
