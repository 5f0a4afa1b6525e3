"""Running a PredictRequest on a loaded version, as TF Serving's predict_util.cc does: the
one path every front end (gRPC, REST, warmup) takes once it has a PredictRequest."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import grpc
from tensorflow_serving.apis import predict_pb2

from unet_keras import contract
from unet_keras.server import requests
from unet_keras.server.codec import as_proto_field
from unet_keras.server.status import StatusError

if TYPE_CHECKING:
    from unet_keras.server.versions import Servable


def predict(
    servable: Servable,
    request: predict_pb2.PredictRequest,
    deadline: float | None = None,
    max_batch: int | None = None,
) -> predict_pb2.PredictResponse:
    """Runs a Predict request on a version, as predict_util.cc's RunPredict does.

    `deadline` (time.monotonic() seconds) bounds the graph's run as TF Serving bounds it
    by the request's deadline: past it, the run is cancelled with DEADLINE_EXCEEDED.
    `max_batch` refuses inputs with a longer first dimension before any work.
    """
    name = request.model_spec.signature_name or contract.SEGMENT
    signature = servable.signature(name)
    inputs = requests.request_inputs(signature, request, max_batch)
    aliases = requests.output_aliases(signature, list(request.output_filter))
    feeds = requests.feeds(signature, inputs)
    timeout_ms = 0
    if deadline is not None:
        timeout_ms = math.ceil((deadline - time.monotonic()) * 1000)
        if timeout_ms <= 0:  # a caller that has given up: no work for it
            raise StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    outputs = servable.run(signature, feeds, aliases, timeout_ms)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.signature_name = name
    response.model_spec.version.value = servable.version
    for alias in aliases:
        response.outputs[alias].CopyFrom(
            as_proto_field(outputs[alias], signature.outputs[alias].dtype)
        )
    return response
