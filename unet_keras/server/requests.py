"""What a Predict or GetModelMetadata request must hold, checked as TensorFlow Serving
checks it, before any work.

Sources followed (github.com/tensorflow/serving): servables/tensorflow/predict_util.cc
(signature lookup, input count, output filter); tensorflow/cc/saved_model/util.cc
(`GetInputValues`: missing, unparsable and unknown inputs);
servables/tensorflow/get_model_metadata_impl.cc.

Deviations: an input whose shape contradicts the signature is refused with
INVALID_ARGUMENT before running (TF Serving feeds it and lets the graph fail or not); with
several inputs, the i of a wrong dtype's "Expects arg[i]" counts them in alias order (TF
Serving: its feed order); a tensor must carry every value its shape holds, or the request
is refused with INVALID_ARGUMENT before decoding (TF Serving fills in the values a tensor
leaves out, so a request of a few bytes could claim gigabytes).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import Message
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from unet_keras import contract
from unet_keras.server.codec import check_carried, type_name
from unet_keras.server.status import StatusError


def _check_input_count(signature: meta_graph_pb2.SignatureDef, sent: set[str]) -> None:
    """predict_util.cc's VerifyRequestInputsSize."""
    expected = set(signature.inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{_join(sent)}}}) != len({{{_join(expected)}}}). Sent extra: "
            f"{{{_join(sent - expected)}}}. Missing but required: {{{_join(expected - sent)}}}.",
        )


def request_inputs(
    signature: meta_graph_pb2.SignatureDef,
    request: predict_pb2.PredictRequest,
    max_batch: int | None = None,
) -> dict[str, tuple[int, np.ndarray]]:
    """Alias -> (dtype, values) of every signature input, as GetInputValues reads them;
    image inputs with more than `max_batch` images are refused before decoding."""
    sent = set(request.inputs)
    _check_input_count(signature, sent)
    for alias, proto in sorted(request.inputs.items()):
        check_carried(alias, proto)
        if alias in signature.inputs and holds_images(signature.inputs[alias]):
            check_batch(alias, proto, max_batch)
    inputs = {}
    for alias in sorted(signature.inputs):
        if alias in request.inputs:
            proto = request.inputs[alias]
        elif alias in signature.defaults:
            proto = signature.defaults[alias]
        else:
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not "
                f"found in request and no default value provided. Inputs expected to be in the "
                f"request {{{_join(sent)}}}, or default input alias set: "
                f"{_join(signature.defaults)}",
            )
        try:
            inputs[alias] = (proto.dtype, tf.make_ndarray(proto))
        # MemoryError too: TF Serving answers a tensor it cannot allocate as unparsable.
        except (ValueError, TypeError, MemoryError):
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}"
            ) from None
    if sent - inputs.keys():
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Inputs contains invalid name. Used request inputs: {_join(sent & inputs.keys())}, "
            f"request input: {_join(sent)}",
        )
    return inputs


def feeds(
    signature: meta_graph_pb2.SignatureDef, inputs: dict[str, tuple[int, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The inputs as arrays, refused where their dtype or shape contradicts the signature."""
    arrays = {}
    for index, (alias, (dtype, array)) in enumerate(inputs.items()):
        info = signature.inputs[alias]
        if dtype != info.dtype:
            # The session's check; `index`: the input's place in alias order.
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{index}] to be {type_name(info.dtype)} but {type_name(dtype)} "
                "is provided",
            )
        shape = tf.TensorShape(info.tensor_shape)
        if not shape.is_compatible_with(array.shape):
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {alias}: shape {list(array.shape)} does not match the signature's {shape}",
            )
        arrays[alias] = array
    return arrays


def holds_images(info: meta_graph_pb2.TensorInfo) -> bool:
    """Whether a signature input is a batch of images: [N, H, W, ...] pixels or tiles, or
    [N] encoded images (strings). Other tensors (a vector of values) have no images to
    count."""
    rank = len(info.tensor_shape.dim)
    return rank >= 3 or (rank == 1 and info.dtype == types_pb2.DT_STRING)


def check_batch(alias: str, proto: tensor_pb2.TensorProto, max_batch: int | None) -> None:
    """Refuses an image input of more than `max_batch` images: a request of many tiny
    images costs far more to run than its bytes (this server only)."""
    shape = proto.tensor_shape.dim
    if max_batch is not None and shape and shape[0].size > max_batch:
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {alias}: {shape[0].size} images along the first dimension, more than this "
            f"server's limit of {max_batch} a request (--max-request-batch); send them in "
            "several requests",
        )


def output_aliases(signature: meta_graph_pb2.SignatureDef, output_filter: list[str]) -> list[str]:
    """The outputs to return: the filter's, checked, else all of the signature's."""
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{_join(signature.outputs)}}}.",
            )
        if alias in seen:
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}"
            )
        seen.append(alias)
    return seen or list(signature.outputs)


def check_metadata_request(request: get_model_metadata_pb2.GetModelMetadataRequest) -> None:
    """get_model_metadata_impl.cc's checks: a model spec and only 'signature_def'."""
    require_model_spec(request)
    if not request.metadata_field:
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "GetModelMetadataRequest must specify at least one metadata_field",
        )
    for field in request.metadata_field:
        if field != contract.METADATA_FIELD:
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported"
            )


def require_model_spec(request: Message) -> None:
    if not request.HasField("model_spec"):
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def _join(names: Iterable[str]) -> str:
    return ",".join(sorted(names))
