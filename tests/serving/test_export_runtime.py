"""Every export kind runs on TensorFlow Serving's own loading path (the C++ LoadSavedModel
and Session::Run, tests/tf_serving_runtime.py), every signature equal bit for bit to TF2's
loader and to `predict`."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.serving_fixtures import ISBI_MASKS, save_unet, served_alike
from tests.tf_serving_runtime import SavedModelSession, TFStatusError
from unet_keras import contract
from unet_keras.config import MaskConfig, ModelConfig, ModelRecord
from unet_keras.inference.segmenter import Segmenter
from unet_keras.serving import export

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


@pytest.fixture(scope="module", params=[*KINDS, "trained in mixed_bfloat16"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(model file, version directory) of one kind of export."""
    folder = tmp_path_factory.mktemp("kind")
    config, mask = KINDS.get(request.param, KINDS["valid, 1 class"])
    policy = keras.config.dtype_policy()
    if request.param == "trained in mixed_bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = save_unet(
            folder / "model.keras", config=config, mask=mask, tile=TILE[config.padding]
        )
    finally:
        keras.config.set_dtype_policy(policy)
    options = {"tile": 76} if config.padding == "valid" else {"tile": 48, "overlap": 16}
    return model, export.export_model(model, folder / "base", max_pixels=10**6, **options), options


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
