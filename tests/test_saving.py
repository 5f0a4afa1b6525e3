"""Model files that carry their record, and loading models from files, runs and exports."""

import dataclasses
import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from unet_keras import contract
from unet_keras.record import Calibration
from unet_keras.saving import load_model, load_network, read_record, save_model, update_record


def test_a_model_file_is_a_keras_file_with_its_record(tmp_path: Path, tiny_unet):
    model, record = tiny_unet()
    path = tmp_path / "model.keras"
    save_model(model, path, record)
    assert read_record(path) == record
    with zipfile.ZipFile(path) as archive:
        assert json.loads(archive.read(contract.RECORD_FILE)) == record.to_dict()
    # Keras opens it as it is.
    plain = keras.models.load_model(path, compile=False)
    assert plain.count_params() == model.count_params()
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_updating_the_record_keeps_the_weights(tmp_path: Path, tiny_unet):
    model, record = tiny_unet()
    path = tmp_path / "best.keras"
    save_model(model, path, record)
    calibration = Calibration(0.3, "adapted_rand_error", ("v",), {}, {})
    update_record(tmp_path, dataclasses.replace(record, threshold=calibration))  # a run dir
    loaded, stored = load_model(path, compile=False)
    assert stored.threshold == calibration
    for mine, theirs in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_a_network_loads_from_a_file_and_from_its_export(tiny_export: Path):
    from tests.serving_fixtures import save_unet

    model_file = save_unet(tiny_export.parent.parent / "model_again.keras")
    tiles = np.random.default_rng(0).normal(size=(2, 92, 92, 1)).astype(np.float32)
    from_file, record = load_network(model_file)
    from_export, exported = load_network(tiny_export)
    assert exported == record
    np.testing.assert_allclose(np.asarray(from_export(tiles)), from_file(tiles), atol=1e-5)


def test_bad_model_files_are_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"none\.keras: no such model file"):
        read_record(tmp_path / "none.keras")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"broken\.keras: not a readable \.keras file"):
        read_record(tmp_path / "broken.keras")
    with zipfile.ZipFile(tmp_path / "plain.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(ValueError, match="without a unet-keras record"):
        read_record(tmp_path / "plain.keras")
    with zipfile.ZipFile(tmp_path / "odd.keras", "w") as archive:
        archive.writestr(contract.RECORD_FILE, json.dumps({"mask": {}}))
    with pytest.raises(ValueError, match=r"odd\.keras: not a readable unet-keras record"):
        read_record(tmp_path / "odd.keras")
    with pytest.raises(ValueError, match=r"model files end in \.keras"):
        save_model(None, tmp_path / "model.h5", None)


def test_a_mixed_precision_model_is_loaded_for_prediction_in_float32(tmp_path: Path, tiny_unet):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model, record = tiny_unet()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    save_model(model, tmp_path / "model.keras", record)
    loaded, _ = load_model(tmp_path / "model.keras")
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}
    for mine, theirs in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    # The same tiles alone or batched: the same probabilities (float32 rounding aside).
    tiles = np.random.default_rng(0).normal(size=(3, 92, 92, 1)).astype("float32")
    together = loaded(tiles, training=False).numpy()
    alone = np.concatenate([loaded(tiles[i : i + 1], training=False).numpy() for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
