"""Warmup requests written into an export, which TensorFlow Serving (and
`unet_keras.server.warmup_replay`) replays before a version is AVAILABLE.

The file is `assets.extra/tf_serving_warmup_requests` in the SavedModel: a TFRecord of
`PredictionLog` records (saved_model_warmup_util.cc reads at most 1000).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from unet_keras import contract


def write_warmup_requests(
    saved_model: str | Path, requests: Iterable[predict_pb2.PredictRequest]
) -> Path:
    """Writes the requests as the export's warmup file; returns its path."""
    path = Path(saved_model) / contract.WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            record = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(record.SerializeToString())
    return path
