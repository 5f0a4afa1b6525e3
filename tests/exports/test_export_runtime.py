"""Every export kind runs on TensorFlow Serving's own loading path (the C++ LoadSavedModel
and Session::Run, tests/tf_serving_runtime.py), every signature equal bit for bit to TF2's
loader and to `predict`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tests.serving_fixtures import ISBI_MASKS, save_unet, served_alike
from tests.tf_serving_runtime import SavedModelSession, TFStatusError
from unet_keras import contract
from unet_keras.exports import savedmodel as export
from unet_keras.inference.segmenter import Segmenter
from unet_keras.record import MaskConfig, ModelConfig, ModelRecord

THREE_CLASSES = MaskConfig((0, 128, 255))
KINDS = {
    "valid, 1 class": (ModelConfig(filters=4, depth=2, padding="valid", dropout=0.0), ISBI_MASKS),
    "same, 1 class": (ModelConfig(filters=4, depth=2, padding="same", dropout=0.0), ISBI_MASKS),
    "valid, 3 classes": (
        ModelConfig(filters=4, depth=2, padding="valid", dropout=0.5, classes=3),
        THREE_CLASSES,
    ),
    "same, 3 classes, batch norm": (
        ModelConfig(filters=4, depth=2, padding="same", batch_norm=True, classes=3),
        THREE_CLASSES,
    ),
}
TILE = {"valid": (92, 52), "same": (64, 64)}
EXPORT_KINDS = [*KINDS, "trained in mixed_bfloat16"]
# The Pythons of environments with the TensorFlow of the oldest supported server and of the
# deployment image's (contract.OLDEST_TF_SERVING_VERSION, TF_SERVING_VERSION); .ci/run
# makes both.
SERVING_PYTHONS = {
    contract.OLDEST_TF_SERVING_VERSION: os.environ.get("UNET_KERAS_OLDEST_SERVING_PYTHON"),
    contract.TF_SERVING_VERSION: os.environ.get("UNET_KERAS_DEPLOYED_SERVING_PYTHON"),
}


def export_kind(folder: Path, kind: str) -> tuple[Path, Path, dict]:
    """(model file, version directory, tiling options) of one kind of export."""
    config, mask = KINDS.get(kind, KINDS["valid, 1 class"])
    policy = keras.config.dtype_policy()
    if kind == "trained in mixed_bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = save_unet(
            folder / "model.keras", config=config, mask=mask, tile=TILE[config.padding]
        )
    finally:
        keras.config.set_dtype_policy(policy)
    options = {"tile": 76} if config.padding == "valid" else {"tile": 48, "overlap": 16}
    return model, export.export_model(model, folder / "base", max_pixels=10**6, **options), options


@pytest.fixture(scope="module", params=EXPORT_KINDS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(model file, version directory, tiling options) of one kind of export."""
    return export_kind(tmp_path_factory.mktemp("kind"), request.param)


def test_every_signature_runs_on_tf_servings_path_as_predict(exported: tuple) -> None:
    model, version, options = exported
    segmenter = Segmenter.from_path(model, **options)
    images = np.random.default_rng(1).integers(0, 256, (2, 61, 83, 1), np.uint8)
    served = served_alike(version, contract.SEGMENT, image=images)
    for image, probabilities, mask in zip(
        images, served[contract.PROBABILITIES], served[contract.MASK], strict=True
    ):
        expected = segmenter.probabilities(image)
        np.testing.assert_array_equal(probabilities, expected)
        np.testing.assert_array_equal(mask, segmenter.mask(segmenter.labels(expected)))
    pngs = np.array([tf.io.encode_png(image).numpy() for image in images], object)
    masks = served_alike(version, contract.SEGMENT_PNG, image_png=pngs)[contract.MASK_PNG]
    for data, mask in zip(masks, served[contract.MASK], strict=True):
        np.testing.assert_array_equal(tf.io.decode_png(data).numpy()[..., 0], mask)
    # The optional input of `metadata` is left out, as a gRPC client leaves it out.
    with SavedModelSession(version) as session:
        record = session.run(contract.METADATA, {})[contract.RECORD]
    assert ModelRecord.from_dict(json.loads(record.item())).model == segmenter.record.model
    side = 92 if segmenter.record.model.padding == "valid" else 48
    tiles = np.random.default_rng(2).normal(size=(3, side, side, 1)).astype(np.float32)
    served_alike(version, contract.TILES, tiles=tiles)


def test_a_refused_request_is_refused_alike_on_tf_servings_path(exported: tuple) -> None:
    _, version, _ = exported
    with SavedModelSession(version) as session, pytest.raises(TFStatusError) as raised:
        session.run(contract.SEGMENT, {contract.IMAGE: np.zeros((2, 1000, 1000, 1), np.uint8)})
    assert raised.value.code_name == "INVALID_ARGUMENT"
    assert "at most 1000000 pixels in all" in raised.value.message


def test_an_export_records_its_tensorflow_and_warns_when_newer_than_the_server(
    exported: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    model, version, _ = exported
    saved = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes())
    assert saved.meta_graphs[0].meta_info_def.tensorflow_version == tf.__version__
    monkeypatch.setattr(contract, "TF_SERVING_VERSION", "2.17.0")
    newer = export.export_model(model, tmp_path / "base", warmup=False)
    assert f"{newer} was written by TensorFlow {tf.__version__}, newer than the 2.17.0" in (
        caplog.text
    )
    assert "pip install 'tensorflow==2.17.*'" in caplog.text


@pytest.fixture(scope="module")
def every_kind_run_here(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Every kind exported, a job per signature, and what each gives here: (folder with
    jobs.json, expected outputs by job name)."""
    folder = tmp_path_factory.mktemp("kinds")
    jobs, expected = [], {}
    for number, kind in enumerate(EXPORT_KINDS):
        _, version, _ = export_kind(folder / str(number), kind)
        images = np.random.default_rng(number).integers(0, 256, (2, 45, 70, 1), np.uint8)
        pngs = np.array([tf.io.encode_png(image).numpy() for image in images], object)
        for signature, inputs in (
            (contract.SEGMENT, {contract.IMAGE: images}),
            (contract.SEGMENT_PNG, {contract.IMAGE_PNG: pngs}),
            (contract.METADATA, {}),
        ):
            name = f"{number}-{signature}"
            np.savez(folder / f"{name}-in.npz", **inputs)
            jobs.append({
                "version_dir": str(version), "signature": signature,
                "inputs": str(folder / f"{name}-in.npz"), "outputs": f"{name}-out.npz",
            })  # fmt: skip
            with SavedModelSession(version) as session:
                expected[name] = session.run(signature, inputs)
    (folder / "jobs.json").write_text(json.dumps(jobs))
    return folder, expected


@pytest.mark.parametrize("server", sorted(SERVING_PYTHONS))
def test_every_export_kind_runs_under_a_supported_servers_tensorflow(
    every_kind_run_here: tuple[Path, dict], server: str, tmp_path: Path
) -> None:
    """Exported with this TensorFlow, run through the C API of the TensorFlow a supported
    TF Serving release carries: every signature of every kind gives what it gives here."""
    python = SERVING_PYTHONS[server]
    if python is None:
        pytest.skip(
            f"no environment with TF Serving {server}'s TensorFlow is named "
            "(UNET_KERAS_OLDEST_SERVING_PYTHON, UNET_KERAS_DEPLOYED_SERVING_PYTHON; .ci/run "
            "makes both)"
        )
    folder, expected = every_kind_run_here
    installed = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('tensorflow-cpu'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert installed == server, f"{python} has TensorFlow {installed}, not {server}"
    jobs = json.loads((folder / "jobs.json").read_text())
    for job in jobs:  # this run's outputs in its own folder
        job["outputs"] = str(tmp_path / job["outputs"])
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    runtime = Path(__file__).resolve().parents[1] / "tf_serving_runtime.py"
    ran = subprocess.run(
        [python, str(runtime), "--jobs", str(tmp_path / "jobs.json")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    for name, outputs in expected.items():
        with np.load(tmp_path / f"{name}-out.npz", allow_pickle=True) as there:
            assert sorted(there.files) == sorted(outputs)
            for alias, value in outputs.items():
                if value.dtype.kind == "f":
                    # Another TensorFlow's softmax may round differently on AVX2 (1 ulp,
                    # 6e-8, seen on an AMD EPYC; bit-equal on AVX-512): close, not equal.
                    np.testing.assert_allclose(
                        there[alias], value, rtol=0, atol=1e-6, err_msg=f"{name}/{alias}"
                    )
                else:
                    assert there[alias].tolist() == value.tolist(), f"{name}/{alias}"
