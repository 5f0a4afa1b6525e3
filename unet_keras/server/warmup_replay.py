"""Warmup requests replayed before a version is AVAILABLE, as TensorFlow Serving replays
them (servables/tensorflow/saved_model_warmup_util.cc); `unet_keras.exports.warmup` writes
them.

The file is `assets.extra/tf_serving_warmup_requests` in the SavedModel: a TFRecord of
`PredictionLog` records, at most 1000. A record that cannot be parsed, is not a predict
log, or fails makes the version fail to load, with TF Serving's messages.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from unet_keras import contract
from unet_keras.server.prediction import predict
from unet_keras.server.status import StatusError

if TYPE_CHECKING:
    from unet_keras.server.versions import Servable

# saved_model_warmup_util.h: WarmupConsts::kMaxNumRecords.
MAX_RECORDS = 1000

log = logging.getLogger(__name__)


def replay_warmup(servable: Servable, saved_model: str | Path) -> int:
    """Runs a version's warmup requests, if it has any; returns how many ran.

    StatusError (the version then fails to load) for a broken file or a failed request.
    """
    path = Path(saved_model) / contract.WARMUP_FILE
    if not path.is_file():
        return 0
    start = time.perf_counter()
    count = 0
    try:
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            count += 1
            if count > MAX_RECORDS:
                raise StatusError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}",
                )
            _run(servable, record, path)
    except tf.errors.OpError as error:
        raise StatusError.from_tf(error) from None
    log.info("Finished reading warmup data for model at %s. Number of warmup records read: "
             "%d. Elapsed time (microseconds): %d.", path, count,
             (time.perf_counter() - start) * 1e6)  # fmt: skip
    return count


def _run(servable: Servable, record: bytes, path: Path) -> None:
    entry = prediction_log_pb2.PredictionLog()
    try:
        entry.ParseFromString(record)
    except Exception:  # protobuf's DecodeError, or worse on hostile bytes
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT, f"Failed to parse warmup record from {path}"
        ) from None
    kind = entry.WhichOneof("log_type")
    if kind is None:  # nothing to run, as TF Serving skips it
        return
    if kind != "predict_log":  # classify, regress, multi-inference: no such signatures here
        raise StatusError(
            grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}"
        )
    predict(servable, entry.predict_log.request)
