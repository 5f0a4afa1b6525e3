"""TensorFlow Serving's REST API, without the HTTP: a method, a path and a body in, an
HTTP status and a JSON body out.

Sources followed (github.com/tensorflow/serving): model_servers/http_rest_api_handler.cc
and http_rest_api_util.cc (paths, model spec, status and metadata JSON),
util/json_tensor.cc (the row `instances` and columnar `inputs` formats, `{"b64": ...}`,
`predictions` and `outputs`, `{"error": ...}`), model_servers/http_server.cc (the HTTP
status of each gRPC code). A Predict goes through the same checks and code as a gRPC
Predict: the JSON becomes a PredictRequest, as in TF Serving.

A Predict's graph run is bounded by --rest_api_timeout_in_ms as in TF Serving
(RunOptions.timeout_in_ms, from the run's start): past it the run is cancelled and the
call answered 504 `{"error": "Timed out waiting for notification"}`. A malformed body is
always a 400 with TF Serving's `{"error": ...}`: JSON that is not UTF-8 or holds a lone
surrogate escape gets rapidjson's message ("Invalid encoding in string.", "The surrogate
pair in string is invalid."), with the byte offset. Each input's values over all
`instances` are decoded in one pass into one array, so a body costs a small multiple of
its size; only a malformed one is then walked instance by instance, to name the instance
at fault as json_tensor.cc does.

Deviations: `:classify` and `:regress` answer UNIMPLEMENTED (no such signatures here);
more `instances` (or a longer first dimension of an `inputs` tensor) than
--max-request-batch are refused before they are decoded, as on the gRPC port (TF Serving
has no such limit); JSON syntax errors carry Python's message, not rapidjson's; a body in
UTF-16 or UTF-32 is refused as not UTF-8 (rapidjson reads no other encoding either, but
passes invalid UTF-8 inside strings through as bytes); the JSON tensor deviations of
`unet_keras.rest_format`.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from typing import Any

import grpc
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from unet_keras import contract, rest_format
from unet_keras.server import requests, rest_json
from unet_keras.server.grpc_services import signature_metadata
from unet_keras.server.models import ModelRegistry
from unet_keras.server.prediction import predict
from unet_keras.server.status import StatusError

# http_rest_api_util.cc's kPredictionApiGegex and kModelStatusApiRegex.
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
API_PATH = re.compile(r"/v1/.*", re.IGNORECASE)

# http_server.cc's ToHTTPStatusCode.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_INT64_MAX = 2**63 - 1
# A \uXXXX escape of a UTF-16 surrogate: an odd run of backslashes before the `u`.


class RestReply:
    """What a REST call answers: HTTP status, JSON body, and what the metrics record
    (`api`: the POST method's name, empty for a GET, as in http_server.cc)."""

    def __init__(self, code: grpc.StatusCode, body: str, model: str = "", api: str = "") -> None:
        self.code = code
        self.http_status = HTTP_STATUS.get(code, 500)
        self.body = body
        self.model = model
        self.api = api


def error_body(message: str) -> str:
    """json_tensor.cc's MakeJsonFromStatus."""
    return json.dumps({"error": message}, indent=4)


def handle(
    registry: ModelRegistry,
    method: str,
    path: str,
    body: bytes | bytearray,
    *,
    timeout_ms: int = 0,
    max_batch: int | None = None,
    body_error: str | None = None,
) -> RestReply:
    """One REST call, as HttpRestApiHandler::ProcessRequest answers it.

    `timeout_ms` > 0 bounds a Predict's graph run (--rest_api_timeout_in_ms); `max_batch`
    refuses longer inputs before decoding them; `body_error` says why the body is empty
    (a gzip body that could not be inflated), for the message.
    """
    model, api = "", ""
    try:
        if method == "POST" and (match := _PREDICT_PATH.fullmatch(path)):
            name, version, label, api = match.groups()
            spec = _model_spec(name, version, label)
            model = spec.name
            if api.lower() != "predict":
                raise StatusError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{api} is not served here: the export has no classify or regress signature",
                )
            document = rest_json.parse_body(body, body_error)
            answer = _predict(registry, spec, document, timeout_ms, max_batch)
            return RestReply(grpc.StatusCode.OK, answer, model, "predict")
        if method == "GET" and (match := _STATUS_PATH.fullmatch(path)):
            name, version, label, metadata = match.groups()
            if not name:
                raise StatusError(
                    grpc.StatusCode.INVALID_ARGUMENT, "Missing model name in request."
                )
            spec = _model_spec(name, version, label)
            model = spec.name
            if metadata:
                return RestReply(grpc.StatusCode.OK, _metadata(registry, spec), model)
            return RestReply(grpc.StatusCode.OK, _status(registry, spec), model)
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
    except StatusError as error:
        return RestReply(error.code, error_body(error.message), model, api)


def refusal(method: str, path: str, code: grpc.StatusCode, message: str) -> RestReply:
    """A call answered before `handle` (too large, too slow, too many, client gone), with
    the model and API its path names, for the metrics."""
    model, api = "", ""
    if method == "POST" and (match := _PREDICT_PATH.fullmatch(path)):
        model, api = urllib.parse.unquote(match.group(1)), match.group(4).lower()
    elif method == "GET" and (match := _STATUS_PATH.fullmatch(path)):
        model = urllib.parse.unquote(match.group(1) or "")
    return RestReply(code, error_body(message), model, api)


def _model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    """http_rest_api_util.cc's ParseModelInfo and FillModelSpecWithNameVersionAndLabel."""
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name))
    if version is not None:
        number = int(version)
        if number > _INT64_MAX:
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Failed to convert version: {version} to numeric.",
            )
        spec.version.value = number
    if label is not None:
        spec.version_label = urllib.parse.unquote(label)
    return spec


def _status(registry: ModelRegistry, spec: model_pb2.ModelSpec) -> str:
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
    response = registry.status(request.model_spec)
    return json_format.MessageToJson(response, always_print_fields_with_no_presence=True)


def _metadata(registry: ModelRegistry, spec: model_pb2.ModelSpec) -> str:
    """http_rest_api_util.cc's ToJsonString(GetModelMetadataResponse): the signature map
    unpacked from its Any, field names as in the protos."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec)
    request.metadata_field.append(contract.METADATA_FIELD)
    with registry.servable(spec) as servable:
        response = signature_metadata(servable, request)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[contract.METADATA_FIELD].Unpack(signatures)
    options = {"always_print_fields_with_no_presence": True, "preserving_proto_field_name": True}
    model_spec = json_format.MessageToJson(response.model_spec, **options)
    signature_def = json_format.MessageToJson(signatures, **options)
    return (
        f'{{\n"model_spec":{model_spec},\n"metadata": {{"signature_def": {signature_def}}}\n}}\n'
    )


def _predict(
    registry: ModelRegistry,
    spec: model_pb2.ModelSpec,
    document: dict[str, Any],
    timeout_ms: int,
    max_batch: int | None,
) -> str:
    """json_tensor.cc's FillPredictRequestFromJson, a Predict, and MakeJsonFromTensors."""
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise rest_json.invalid(
            f"JSON Value: {rest_format.shown(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    spec.signature_name = signature_name
    with registry.servable(spec) as servable:
        name = signature_name or contract.SEGMENT
        if name not in servable.signature_defs:
            raise rest_json.invalid(f'Serving signature name: "{name}" not found in signature def')
        inputs = servable.signature_defs[name].inputs
        if not inputs:
            raise rest_json.invalid(
                f"Failed to get input map for signature: {signature_name or 'DEFAULT'}"
            )
        dtypes = {alias: rest_json.numpy_dtype(info.dtype) for alias, info in inputs.items()}
        request = predict_pb2.PredictRequest(model_spec=spec)
        # Counted only where a signature takes images (the gRPC port's rule).
        if not any(requests.holds_images(info) for info in inputs.values()):
            max_batch = None
        row_format = rest_json.fill_inputs(document, dtypes, request, max_batch)
        # As TF Serving's RunOptions.timeout_in_ms: the run gets the whole timeout.
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms > 0 else None
        response = predict(servable, request, deadline, max_batch)
    outputs = {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}
    return rest_json.outputs_json(outputs, row_format)
