"""Running a PredictRequest on a loaded version, as TF Serving's predict_util.cc does: the
one path every front end (gRPC, REST, warmup) takes once it has a PredictRequest."""

from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from unet_keras import contract
from unet_keras.serving import requests
from unet_keras.serving.codec import as_proto_field
from unet_keras.serving.status import StatusError

if TYPE_CHECKING:
    from unet_keras.serving.versions import Servable


def predict(
    servable: Servable, request: predict_pb2.PredictRequest
) -> predict_pb2.PredictResponse:
    """Runs a Predict request on a version, as predict_util.cc's RunPredict does."""
    name = request.model_spec.signature_name or contract.SEGMENT
    signature, function = servable.signature(name)
    inputs = requests.request_inputs(signature, request)
    aliases = requests.output_aliases(signature, list(request.output_filter))
    feeds = requests.feeds(signature, inputs)
    try:
        outputs = function(**feeds)
    except tf.errors.OpError as error:
        raise StatusError.from_tf(error) from None
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.signature_name = name
    response.model_spec.version.value = servable.version
    for alias in aliases:
        response.outputs[alias].CopyFrom(as_proto_field(outputs[alias]))
    return response
