"""`export --format onnx`: ONNX Runtime's probabilities equal Keras's on real ISBI tiles, for
every kind of model; predict through ONNX Runtime tiles as predict does; and both commands
run where TensorFlow is not installed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
import tifffile
from PIL import Image

from tests.exports.test_export_runtime import KINDS, TILE
from tests.serving_fixtures import ISBI_MASKS, TINY_NORMALIZATION
from unet_keras import contract
from unet_keras.exports.onnx_export import ONNX_OPSET, export_onnx, onnx_model
from unet_keras.geometry import output_size
from unet_keras.inference.onnx_network import load_onnx
from unet_keras.inference.segmenter import Segmenter
from unet_keras.io.normalization import normalize
from unet_keras.model import build_unet
from unet_keras.record import ModelConfig, ModelRecord, TileSizes
from unet_keras.saving import load_model, save_model

# ONNX Runtime's and TensorFlow's kernels sum convolutions in other orders: measured up to
# 1.1e-6 on the shipped model; the tolerance leaves room for other CPUs' kernels.
TOLERANCE = 1e-5
ONNX_KINDS = [*KINDS, "trained in mixed_bfloat16"]
# The Python of an environment with unet-keras[onnx] and no TensorFlow; .ci/run makes it.
ONNX_PYTHON = os.environ.get("UNET_KERAS_ONNX_PYTHON")


def model_of_kind(path: Path, kind: str) -> Path:
    """A tiny U-Net of `kind` with random weights, batch norm statistics included, saved."""
    config, mask = KINDS.get(kind, KINDS["valid, 1 class"])
    policy = keras.config.dtype_policy()
    if kind == "trained in mixed_bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(3)
        model = build_unet(**config.to_dict())
    finally:
        keras.config.set_dtype_policy(policy)
    rng = np.random.default_rng(3)
    # Kernels as initialised; biases and batch norm's statistics moved off their initial
    # zeros and ones, so that the export must carry them (variances stay positive).
    model.set_weights(
        [
            w if "kernel" in v.path else np.abs(w + rng.normal(0, 0.2, w.shape)) + 0.1
            for v, w in zip(model.weights, model.get_weights(), strict=True)
        ]
    )
    record = ModelRecord(mask, TINY_NORMALIZATION, config, TileSizes(*TILE[config.padding]))
    save_model(model, path, record)
    return path


@pytest.fixture(scope="module", params=ONNX_KINDS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(model file, ONNX file) of one kind of model."""
    folder = tmp_path_factory.mktemp("onnx")
    model = model_of_kind(folder / "model.keras", request.param)
    return model, export_onnx(model, folder / "model.onnx", tile=76)


def isbi_section(isbi: Path, rows: int, cols: int) -> np.ndarray:
    """The top left corner of ISBI training section 00, (rows, cols, 1) uint8."""
    image = np.asarray(Image.open(sorted((isbi / "train" / "images").iterdir())[0]))
    return image[:rows, :cols, None]


def test_onnx_runtime_gives_kerass_probabilities_on_real_tiles(exported, isbi) -> None:
    model_file, onnx_file = exported
    proto = onnx.load(onnx_file)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == ONNX_OPSET
    network, record = load_onnx(onnx_file)
    model, _ = load_model(model_file)
    size = 92 if record.model.padding == "valid" else 96
    tiles = np.stack([isbi_section(isbi, size, size), isbi_section(isbi, 2 * size, size)[size:]])
    expected = np.asarray(model(normalize(tiles, record.normalization), training=False))
    got = network(tiles)
    assert got.shape == expected.shape
    assert got.shape[1] == output_size(size, record.model.depth, record.model.padding)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_the_record_and_tiling_contract_travel_in_the_file(exported) -> None:
    model_file, onnx_file = exported
    properties = {p.key: p.value for p in onnx.load(onnx_file).metadata_props}
    _, record = load_model(model_file)
    assert ModelRecord.from_dict(json.loads(properties[contract.ONNX_RECORD])) == record
    tiling = json.loads(properties[contract.ONNX_TILING])
    assert tiling["layout"] == "NHWC" and tiling["input_dtype"] == "uint8"
    assert tiling["padding"] == record.model.padding
    assert tiling["halo"] == (8 * 2 + 4 if record.model.padding == "valid" else 0)
    assert tiling["mask_values"] == list(record.mask.class_values)


def test_predict_through_onnx_runtime_tiles_as_predict(exported, isbi) -> None:
    model_file, onnx_file = exported
    valid = load_model(model_file)[1].model.padding == "valid"
    options = {"tile": 76} if valid else {"tile": 48, "overlap": 16}
    image = isbi_section(isbi, 150, 181)  # several tiles on both axes, odd sizes
    expected = Segmenter.from_path(model_file, **options, batch_size=2).probabilities(image)
    through_onnx = Segmenter.from_path(onnx_file, **options, batch_size=2)
    got = through_onnx.probabilities(image)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_bad_paths_and_foreign_onnx_files_are_refused_by_name(tmp_path: Path) -> None:
    model = model_of_kind(tmp_path / "model.keras", "valid, 1 class")
    with pytest.raises(ValueError, match=r"out\.zip: an ONNX model's file name ends in \.onnx"):
        export_onnx(model, tmp_path / "out.zip")
    with pytest.raises(FileNotFoundError, match=r"absent\.onnx"):
        load_onnx(tmp_path / "absent.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match=r"garbage\.onnx: not a model ONNX Runtime can run"):
        load_onnx(tmp_path / "garbage.onnx")
    foreign = onnx.load(export_onnx(model, tmp_path / "foreign.onnx"))
    del foreign.metadata_props[:]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match=r"foreign\.onnx: an ONNX model without a unet-keras"):
        load_onnx(tmp_path / "foreign.onnx")


def test_a_failed_export_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    model = model_of_kind(tmp_path / "model.keras", "valid, 1 class")
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the user's previous export")

    def broken(proto, path):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        export_onnx(model, target)
    assert target.read_bytes() == b"the user's previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "model.onnx"]


def test_the_shipped_model_through_onnx_runtime(tmp_path: Path, isbi) -> None:
    onnx_file = export_onnx("isbi2012-membranes", tmp_path / "shipped.onnx")
    assert onnx_file.stat().st_size < 10 * 2**20
    image = isbi_section(isbi, 512, 512)
    expected = Segmenter.from_path("isbi2012-membranes").probabilities(image)
    got = Segmenter.from_path(onnx_file).probabilities(image)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.skipif(ONNX_PYTHON is None, reason="UNET_KERAS_ONNX_PYTHON is not set")
def test_export_and_predict_run_where_tensorflow_is_not_installed(tmp_path: Path, isbi) -> None:
    """The commands as a user without TensorFlow runs them (export reads the model with
    Keras on JAX; predict loads neither Keras nor JAX), checked against predict here."""
    model = model_of_kind(tmp_path / "model.keras", "same, 3 classes, batch norm")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(isbi_section(isbi, 130, 170)[..., 0]).save(images / "section.png")
    run = {"check": True, "capture_output": True, "text": True, "cwd": tmp_path}
    export = [str(Path(ONNX_PYTHON).with_name("unet-keras")), "export", "--model", str(model)]
    subprocess.run([*export, "--format", "onnx", "--output", "m.onnx"], **run)
    predict = [
        "predict", "--model", "m.onnx", "--input", "images", "--output", "masks",
        "--tile", "48", "--overlap", "16", "--probabilities", "tiff",
    ]  # fmt: skip
    script = (
        "import importlib.util, json, sys\n"
        "from unet_keras.cli import main\n"
        f"status = main({predict!r})\n"
        "print(json.dumps([status, importlib.util.find_spec('tensorflow') is None,"
        " sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules)]))\n"
    )
    result = subprocess.run([ONNX_PYTHON, "-c", script], **run)
    status, no_tensorflow, loaded = json.loads(result.stdout.splitlines()[-1])
    assert (status, no_tensorflow, loaded) == (0, True, [])
    segmenter = Segmenter.from_path(model, tile=48, overlap=16)
    expected = segmenter.probabilities(isbi_section(isbi, 130, 170))
    got = tifffile.imread(tmp_path / "masks" / "section_probabilities.tif")
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
    mask = np.asarray(Image.open(tmp_path / "masks" / "section.png"))
    assert (mask == segmenter.mask(segmenter.labels(expected))).mean() > 0.999


@pytest.mark.parametrize(
    ("padding", "depth", "classes", "rows", "cols", "tile", "overlap"),
    [
        ("valid", 2, 1, 117, 133, 76, None),
        ("valid", 3, 3, 208, 229, 124, None),
        ("same", 2, 1, 40, 56, 48, 16),  # one tile each way, smaller than a whole tile
        ("same", 2, 1, 117, 133, 48, 16),  # several, blended
        ("same", 2, 1, 117, 133, 48, 40),  # 3 to 7 tiles see each pixel
        ("same", 3, 3, 300, 212, 64, 24),
    ],
)
def test_a_whole_image_graph_gives_predicts_probabilities(
    isbi, padding, depth, classes, rows, cols, tile, overlap
) -> None:
    """`onnx_model(whole_image=True)` (the BioImage.IO package's ONNX weights): images of
    any size, two at a time, tiled inside the graph (valid: mirrored by the margin; same:
    predict's overlapping tiles and Gaussian blend), give predict's probabilities."""
    import onnxruntime

    keras.utils.set_random_seed(depth)
    config = ModelConfig(filters=4, depth=depth, padding=padding, dropout=0.0, classes=classes)
    mask = ISBI_MASKS if classes == 1 else KINDS["valid, 3 classes"][1]
    model = build_unet(**config.to_dict())
    record = ModelRecord(mask, TINY_NORMALIZATION, config, TileSizes(*TILE[padding]))
    proto = onnx_model(model, record, whole_image=True, tile=tile, overlap=overlap)
    # ONNX Runtime's scatters add repeated indices from several threads unlocked, and lose
    # some under load (onnx_tiles.blended_same): a blend must gather instead.
    assert not {node.op_type for node in proto.graph.node} & {"ScatterND", "ScatterElements"}
    session = onnxruntime.InferenceSession(proto.SerializeToString())
    image = isbi_section(isbi, rows, cols)
    images = np.stack([image, np.ascontiguousarray(image[::-1])])
    got = session.run(None, {contract.IMAGE: images})[0]
    segmenter = Segmenter.from_model(model, record, tile=tile, overlap=overlap)
    expected = np.stack([segmenter.probabilities(one) for one in images])
    assert got.shape == expected.shape == (2, rows, cols, classes)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_a_volume_predicted_through_onnx_runtime(tmp_path: Path, tiny_model_file) -> None:
    """Volumes take MODEL.onnx as every model path: the blocks' probabilities equal the Keras
    model's sections predicted whole."""
    import zarr

    from tests.inference.test_volumes import INFERENCE, config, make_volume, whole_sections
    from unet_keras import workflows

    model = tiny_model_file()
    onnx_file = export_onnx(model, tmp_path / "model.onnx")
    pixels = make_volume(tmp_path / "in.zarr", (2, 70, 90))
    job = config(onnx_file, tmp_path / "in.zarr", tmp_path / "out.zarr", probabilities="zarr")
    report = workflows.predict(job, progress=False)
    assert report.failed == [] and report.predicted == 2 * 2 * 2
    _, maps = whole_sections(model, pixels, INFERENCE)
    got = zarr.open_array(tmp_path / "out.zarr/probabilities/0", mode="r")[...]
    np.testing.assert_allclose(got, maps, atol=TOLERANCE, rtol=0)
