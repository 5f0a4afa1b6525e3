"""unet_keras.exports.savedmodel: signatures, parity with tiled prediction, ops, versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tests.serving_fixtures import refused_alike, save_unet, served_alike
from unet_keras import contract
from unet_keras.cli import main
from unet_keras.exports import savedmodel as export
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.readers import read_image
from unet_keras.record import ModelConfig, ModelRecord
from unet_keras.saving import read_record

FORBIDDEN_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


@pytest.fixture(scope="module")
def valid_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model file, version directory) of the tiny U-Net with 76-pixel tiles."""
    folder = tmp_path_factory.mktemp("valid")
    model = save_unet(folder / "model.keras")
    options = {"tile": 76, "tiles_per_call": 4, "max_pixels": 10**6}
    return model, export.export_model(model, folder / "base", **options)


def serve(version: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """serving_default on one (H, W, C) image, on TF Serving's loading path and TF2's alike."""
    return {
        k: v[0] for k, v in served_alike(version, "serving_default", image=image[None]).items()
    }


def test_signatures_as_saved_model_cli_shows_them(valid_export: tuple[Path, Path]) -> None:
    _, version = valid_export
    shown = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all",
         "--dir", str(version)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout  # fmt: skip
    blocks = shown.split("signature_def[")
    default = next(b for b in blocks if b.startswith("'serving_default'"))
    assert (
        "inputs['image'] tensor_info:\n        dtype: DT_UINT8\n        shape: (-1, -1, -1, 1)"
        in (default)
    )
    assert "outputs['probabilities'] tensor_info:\n        dtype: DT_FLOAT" in default
    assert (
        "outputs['mask'] tensor_info:\n        dtype: DT_UINT8\n        shape: (-1, -1, -1)"
        in (default)
    )
    png = next(b for b in blocks if b.startswith("'segment_png'"))
    assert "inputs['image_png'] tensor_info:\n        dtype: DT_STRING" in png
    assert "outputs['mask_png_bytes']" in png
    assert any(b.startswith("'metadata'") and "outputs['metadata']" in b for b in blocks)
    assert any(b.startswith("'tiles'") and "inputs['tiles']" in b for b in blocks)


def test_outputs_equal_tiled_prediction_on_odd_sizes(valid_export: tuple[Path, Path]) -> None:
    model, version = valid_export
    segmenter = Segmenter.from_path(model, tile=76)
    for shape in ((157, 211), (5, 9), (76, 300)):
        image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 1), np.uint8)
        expected = segmenter.probabilities(image)
        served = serve(version, image)
        # 4 tiles a call against predict's 1: equal to rounding (see below).
        np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
        np.testing.assert_array_equal(served["mask"], segmenter.mask(segmenter.labels(expected)))


@pytest.mark.slow
def test_outputs_equal_tiled_prediction_on_isbi(
    valid_export: tuple[Path, Path], isbi: Path
) -> None:
    model, version = valid_export
    image = read_image(isbi / "train" / "images" / "00.png")
    expected = Segmenter.from_path(model, tile=76).probabilities(image)
    np.testing.assert_allclose(serve(version, image)["probabilities"], expected, atol=1e-5)
    # A model loads from its export too, with the same outputs.
    from_export = Segmenter.from_path(version, tile=76).probabilities(image)
    np.testing.assert_allclose(from_export, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "shape"),
    [({}, (101, 70)), ({"tile": 32, "overlap": 12}, (101, 70)), ({"tile": 48}, (48, 130))],
)
def test_same_padding_export_blends_tiles_as_predict_does_bit_for_bit(
    tmp_path: Path, options: dict, shape: tuple[int, int]
) -> None:
    """One lone tile (the default 512 covers the image), and tiles blended where two and
    three overlap: the graph's probabilities are predict's to the bit, so are the masks."""
    config = ModelConfig(filters=4, depth=2, padding="same", dropout=0.0)
    model = save_unet(tmp_path / "model.keras", config=config, tile=(64, 64))
    version = export.export_model(model, tmp_path / "base", warmup=False, **options)
    image = np.random.default_rng(3).integers(0, 256, (*shape, 1), np.uint8)
    segmenter = Segmenter.from_path(model, **options)
    expected = segmenter.probabilities(image)
    served = serve(version, image)
    np.testing.assert_array_equal(served["probabilities"], expected)
    np.testing.assert_array_equal(served["mask"], segmenter.mask(segmenter.labels(expected)))


def test_png_signature_and_its_guards(valid_export: tuple[Path, Path]) -> None:
    _, version = valid_export
    image = np.random.default_rng(5).integers(0, 256, (40, 33, 1), np.uint8)
    png8 = tf.io.encode_png(image).numpy()
    # A 16-bit PNG is scaled to the 8-bit range the model was trained on.
    png16 = tf.io.encode_png(image.astype(np.uint16) * 257).numpy()
    pngs = np.array([png8, png16], object)
    masks = served_alike(version, "segment_png", image_png=pngs)["mask_png_bytes"]
    expected = serve(version, image)["mask"]
    for data in masks:
        np.testing.assert_array_equal(tf.io.decode_png(data).numpy()[..., 0], expected)
    garbage = np.array([b"GIF89a garbage bytes here......"], object)
    refused_alike(version, "segment_png", "not PNG data", image_png=garbage)
    # Headers that claim more than the limit are refused before decoding, even where the
    # product of their sides would overflow int64.
    for side in (100000, 2**32 - 1):
        bomb = png8[:16] + side.to_bytes(4, "big") * 2 + png8[24:]
        bombs = np.array([bomb], object)
        refused_alike(version, "segment_png", "more pixels in all than", image_png=bombs)


def test_signatures_are_the_contracts(valid_export: tuple[Path, Path]) -> None:
    _, version = valid_export
    loaded = tf.saved_model.load(str(version))
    found = {
        name: (
            tuple(sorted(function.structured_input_signature[1])),
            tuple(sorted(function.structured_outputs)),
        )
        for name, function in loaded.signatures.items()
    }
    expected = {
        name: (tuple(sorted(inputs)), tuple(sorted(outputs)))
        for name, (inputs, outputs) in contract.SIGNATURES.items()
    }
    assert found == expected


def test_metadata_signature_and_asset(valid_export: tuple[Path, Path]) -> None:
    model, version = valid_export
    # TF2's in-process signatures take no defaults; TF Serving's path fills the input in.
    served = served_alike(version, contract.METADATA)[contract.RECORD].item()
    served = ModelRecord.from_dict(json.loads(served))
    stored = json.loads((version / "assets" / contract.RECORD_FILE).read_text())
    assert served.to_dict() == stored
    assert served == read_record(model)
    assert served.mask.class_values == (0, 255)
    assert served.normalization.offset == (120.0,)


def test_a_threshold_set_at_export_is_in_its_record(
    valid_export: tuple[Path, Path], tmp_path: Path
) -> None:
    model, _ = valid_export
    version = export.export_model(model, tmp_path / "base", threshold=0.3)
    record = json.loads((version / "assets" / contract.RECORD_FILE).read_text())
    assert record["threshold"]["value"] == 0.3
    assert record["threshold"]["chosen_by"] == "set at export"


def test_only_core_tensorflow_ops(valid_export: tuple[Path, Path]) -> None:
    _, version = valid_export
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((version / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    library = {function.signature.name for function in graph.library.function}
    core = set(dir(tf.raw_ops))
    assert {"Conv2D", "GatherV2", "DecodePng", "EncodePng"} <= ops
    assert not ops & FORBIDDEN_OPS
    # Calls into the graph's own functions are fine; everything else must be a core op.
    assert sorted(ops - core - library) == []


def test_variables_are_saved_once(valid_export: tuple[Path, Path]) -> None:
    model_file, version = valid_export
    model = keras.models.load_model(model_file, compile=False)
    stored = tf.train.load_checkpoint(str(version / "variables" / "variables"))
    shapes = stored.get_variable_to_shape_map()
    shapes.pop("_CHECKPOINTABLE_OBJECT_GRAPH")
    assert sum(int(np.prod(s)) for s in shapes.values()) == model.count_params()


def test_versions_count_up_and_are_never_overwritten(
    valid_export: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    model, version = valid_export
    base = version.parent
    status = main(["export", "--model", str(model), "--base-path", str(base), "--tile", "76"])
    assert status == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(base / "2")
    status = main(["export", "--model", str(model), "--base-path", str(base), "--version", "1"])
    assert status == 2
    assert "version 1 exists and is never overwritten; export as version 3" in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


def test_failed_export_leaves_nothing(
    valid_export: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = valid_export

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        export.export_model(model, tmp_path / "base")
    assert list((tmp_path / "base").iterdir()) == []


def test_every_signature_refuses_more_pixels_per_request_than_the_limit(
    valid_export: tuple[Path, Path],
) -> None:
    """The limit (10**6 here) is for a whole request, N x H x W, on every signature."""
    _, version = valid_export
    message = "at most 1000000 pixels in all"
    images = np.zeros((5, 500, 500, 1), np.uint8)
    tall = np.zeros((1, 1001, 1000, 1), np.uint8)
    refused_alike(version, "serving_default", message, image=tall)
    refused_alike(version, "serving_default", message, image=images)
    refused_alike(version, "tiles", message, tiles=np.zeros((5, 500, 500, 1), np.float32))
    tile = np.zeros((1, 92, 92, 1), np.float32)
    assert served_alike(version, "tiles", tiles=tile)["probabilities"].shape[1] == 52
    png = tf.io.encode_png(tf.zeros([500, 500, 1], tf.uint8)).numpy()
    pngs = np.array([png] * 5, object)
    refused_alike(version, "segment_png", "more pixels in all than", image_png=pngs)
    empty = np.zeros((1, 0, 5, 1), np.uint8)
    refused_alike(version, "serving_default", "at least 1 pixel a side", image=empty)


@pytest.mark.parametrize("batch", [1, 3])
def test_tiles_are_run_a_chunk_at_a_time_with_the_same_result(
    valid_export: tuple[Path, Path], batch: int
) -> None:
    """Several images and many tiles (76-pixel tiles: 5 x 4 per 157 x 211 image) go
    through the network 4 tiles at a time; each pixel written by the tile that owns it."""
    model, version = valid_export
    images = np.random.default_rng(9).integers(0, 256, (batch, 157, 211, 1), np.uint8)
    served = served_alike(version, "serving_default", image=images)["probabilities"]
    segmenter = Segmenter.from_path(model, tile=76)
    # 4 tiles a call against predict's 1: the convolutions round alike only to 1e-6.
    # (Exports with one tile a call, the default, equal predict bit for bit:
    # test_export_runtime.py.)
    for image, result in zip(images, served, strict=True):
        np.testing.assert_allclose(result, segmenter.probabilities(image), atol=1e-5)


def test_exports_running_at_once_take_their_own_versions(
    valid_export: tuple[Path, Path], tmp_path: Path
) -> None:
    model, _ = valid_export
    base = tmp_path / "base"
    command = [sys.executable, "-m", "unet_keras.cli", "export", "--model", str(model)]
    command += ["--base-path", str(base)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert sorted(output.strip().splitlines()[-1] for output in outputs) == [
        str(base / "1"), str(base / "2"),
    ]  # fmt: skip
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


def test_a_model_file_with_a_broken_record_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import zipfile

    model = save_unet(tmp_path / "model.keras")
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(model) as source, zipfile.ZipFile(broken, "w") as target:
        for entry in source.infolist():
            data = source.read(entry.filename)
            if entry.filename == contract.RECORD_FILE:
                record = json.loads(data)
                del record["model"]
                data = json.dumps(record).encode()
            target.writestr(entry, data)
    status = main(["export", "--model", str(broken), "--base-path", str(tmp_path / "base")])
    assert status == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "broken.keras: not a readable unet-keras record" in error
    assert "missing setting(s) ['model']" in error
