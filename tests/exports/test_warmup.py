"""unet_keras.server.warmup_replay: the export's warmup requests, replayed before a version is
AVAILABLE, and a broken warmup file failing the load as in TF Serving."""

import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tests.serving_fixtures import (
    HALF_PLUS_TWO,
    export_half_plus_two,
    predict_request,
    registry_for,
    save_unet,
)
from unet_keras import contract
from unet_keras.exports.savedmodel import export_model
from unet_keras.exports.warmup import write_warmup_requests
from unet_keras.server.status import StatusError
from unet_keras.server.versions import Servable
from unet_keras.server.warmup_replay import MAX_RECORDS


def records(version: Path) -> list[prediction_log_pb2.PredictionLog]:
    """The warmup file's records."""
    path = str(version / contract.WARMUP_FILE)
    return [
        prediction_log_pb2.PredictionLog.FromString(record)
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator()
    ]


def test_export_writes_one_request_per_image_signature_and_the_server_replays_them(
    tmp_path: Path,
) -> None:
    model = save_unet(tmp_path / "model.keras")
    version = export_model(model, tmp_path / "unet", tile=76)
    logs = records(version)
    signatures = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert signatures == [contract.SEGMENT, contract.SEGMENT_PNG]
    image = tf.make_ndarray(logs[0].predict_log.request.inputs[contract.IMAGE])
    assert image.dtype == np.uint8 and image.shape[0] == 1 and image.shape[1] == image.shape[2]
    assert Servable(1, version).warmup_records == 2
    plain = export_model(model, tmp_path / "unet", warmup=False)
    assert not (plain / contract.WARMUP_FILE).exists()
    assert Servable(2, plain).warmup_records == 0


def load_error(base: Path) -> str:
    """How starting a server on `base` fails: the load error of its one version."""
    registry = registry_for(HALF_PLUS_TWO, base)
    with pytest.raises(StatusError) as raised:
        registry.start(0.1, threading.Event())
    return raised.value.message.split("due to error: ", 1)[1]


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda path: path.write_bytes(b"not a TFRecord file at all"), "DATA_LOSS"),
        (
            lambda path: _write_raw(path, [b"\xff\xff not a PredictionLog"]),
            "INVALID_ARGUMENT: Failed to parse warmup record",
        ),
        (
            lambda path: write_warmup_requests(path.parents[1], [predict_request(y=[1.0])]),
            "INVALID_ARGUMENT: Signature input alias: x(feed name: serving_default_x:0) not "
            "found in request",
        ),
        (
            lambda path: _write_raw(
                path,
                [
                    prediction_log_pb2.PredictionLog(
                        classify_log=prediction_log_pb2.ClassifyLog()
                    ).SerializeToString()
                ],
            ),
            "UNIMPLEMENTED: Unsupported log_type for warmup: classify_log",
        ),
    ],
)
def test_a_broken_warmup_file_fails_the_load(tmp_path: Path, write: object, expected: str) -> None:
    version = export_half_plus_two(tmp_path / HALF_PLUS_TWO, 1)
    path = version / contract.WARMUP_FILE
    path.parent.mkdir()
    write(path)
    assert load_error(tmp_path / HALF_PLUS_TWO).startswith(expected)


def test_more_records_than_tf_serving_allows_fail_the_load(tmp_path: Path) -> None:
    version = export_half_plus_two(tmp_path / HALF_PLUS_TWO, 1)
    request = predict_request(x=np.array([1.0], np.float32))
    write_warmup_requests(version, [request] * (MAX_RECORDS + 1))
    assert f"exceeds the maximum ({MAX_RECORDS})" in load_error(tmp_path / HALF_PLUS_TWO)


def _write_raw(path: Path, raw: list[bytes]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in raw:
            writer.write(record)
