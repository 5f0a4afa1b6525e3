"""TensorFlow Serving's REST API, without the HTTP: a method, a path and a body in, an
HTTP status and a JSON body out.

Sources followed (github.com/tensorflow/serving): model_servers/http_rest_api_handler.cc
and http_rest_api_util.cc (paths, model spec, status and metadata JSON),
util/json_tensor.cc (the row `instances` and columnar `inputs` formats, `{"b64": ...}`,
`predictions` and `outputs`, `{"error": ...}`), model_servers/http_server.cc (the HTTP
status of each gRPC code). A Predict goes through the same checks and code as a gRPC
Predict: the JSON becomes a PredictRequest, as in TF Serving.

Deviations: `:classify` and `:regress` answer UNIMPLEMENTED (no such signatures here);
the JSON tensor deviations of `unet_keras.rest_format`.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from unet_keras import contract, rest_format
from unet_keras.serving.grpc_services import signature_metadata
from unet_keras.serving.models import ModelRegistry
from unet_keras.serving.predict import predict
from unet_keras.serving.status import StatusError

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


def handle(registry: ModelRegistry, method: str, path: str, body: bytes) -> RestReply:
    """One REST call, as HttpRestApiHandler::ProcessRequest answers it."""
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
            return RestReply(grpc.StatusCode.OK, _predict(registry, spec, body), model, "predict")
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


def _predict(registry: ModelRegistry, spec: model_pb2.ModelSpec, body: bytes) -> str:
    """json_tensor.cc's FillPredictRequestFromJson, a Predict, and MakeJsonFromTensors."""
    document = _parse(body)
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _invalid(
            f"JSON Value: {rest_format.shown(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    spec.signature_name = signature_name
    with registry.servable(spec) as servable:
        name = signature_name or contract.SEGMENT
        if name not in servable.signature_defs:
            raise _invalid(f'Serving signature name: "{name}" not found in signature def')
        inputs = servable.signature_defs[name].inputs
        if not inputs:
            raise _invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
        dtypes = {alias: _numpy_dtype(info.dtype) for alias, info in inputs.items()}
        request = predict_pb2.PredictRequest(model_spec=spec)
        row_format = _fill_inputs(document, dtypes, request)
        response = predict(servable, request)
    outputs = {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}
    return _outputs_json(outputs, row_format)


def _parse(body: bytes) -> dict[str, Any]:
    if not body:
        raise _invalid("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # RecursionError: nesting past Python's
        raise _invalid(f"JSON Parse error: {error}") from None
    if not isinstance(document, dict):
        raise _invalid(f"JSON Value: {rest_format.shown(document)} Is not object")
    return document


def _fill_inputs(
    document: dict[str, Any], dtypes: dict[str, np.dtype], request: predict_pb2.PredictRequest
) -> bool:
    """The request's inputs from `instances` (row format: True) or `inputs` (columnar)."""
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise _invalid(
            f"JSON Value: {rest_format.shown(document)} Not formatted correctly expecting "
            "only one of 'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        arrays = _instances(document, dtypes)
    elif has_inputs:
        arrays = _columns(document["inputs"], dtypes)
    else:
        raise _invalid("Missing 'inputs' or 'instances' key")
    for alias, array in arrays.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(array, dtype=_tf_dtype(dtypes[alias])))
    return has_instances


def _instances(document: dict[str, Any], dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """json_tensor.cc's FillTensorMapFromInstancesList."""
    instances = document["instances"]
    if not isinstance(instances, list):
        raise _invalid(
            f"JSON Value: {rest_format.shown(document)} Expecting 'instances' to be an list/array"
        )
    if not instances:
        raise _invalid(f"JSON Value: {rest_format.shown(document)} No values in 'instances' array")

    def is_named(value: Any) -> bool:
        return isinstance(value, dict) and not rest_format.is_base64_object(value)

    named = is_named(instances[0])
    if not named and len(dtypes) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    items: dict[str, list[np.ndarray]] = {alias: [] for alias in dtypes}
    for index, instance in enumerate(instances):
        if named != is_named(instance):
            kind = "object but got list" if named else "value/list but got object"
            raise _invalid(f"Expecting {kind} at item {index} of input list")
        values = instance if named else {next(iter(dtypes)): instance}
        for alias, value in values.items():
            if alias not in dtypes:
                raise _invalid(
                    f"Failed to process element: {index} key: {alias} of 'instances' list. "
                    f"Error: INVALID_ARGUMENT: JSON object: does not have named input: {alias}"
                )
            try:
                array = rest_format.decode_tensor(value, dtypes[alias])
            except rest_format.JsonTensorError as error:
                where = f"{index} key: {alias}" if named else str(index)
                raise _invalid(
                    f"Failed to process element: {where} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: {error}"
                ) from None
            if items[alias] and array.shape != items[alias][0].shape:
                first = items[alias][0]
                if array.size != first.size:
                    message = f"Expecting tensor size: {first.size} but got: {array.size}"
                else:
                    message = f"Expecting shape {_shape(first)} but got: {_shape(array)}"
                raise _invalid(
                    f"Failed to process element: {index} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: {message}"
                )
            items[alias].append(array)
        if named and set(instance) != set(dtypes):
            raise _invalid(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{rest_format.shown(instance)} keys must be equal to: {','.join(sorted(dtypes))}"
            )
    return {alias: np.stack(arrays) for alias, arrays in items.items()}


def _columns(value: Any, dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """json_tensor.cc's FillTensorMapFromInputsMap."""
    try:
        if not isinstance(value, dict) or rest_format.is_base64_object(value):
            if len(dtypes) > 1:
                raise _invalid(
                    "inputs is a plain value/list, but expecting an object as multiple input "
                    "tensors required as per tensorinfo_map"
                )
            alias = next(iter(dtypes))
            return {alias: rest_format.decode_tensor(value, dtypes[alias])}
        arrays = {}
        for alias, dtype in sorted(dtypes.items()):
            if alias not in value:
                raise _invalid(f"Missing named input: {alias} in 'inputs' object.")
            arrays[alias] = rest_format.decode_tensor(value[alias], dtype)
        return arrays
    except rest_format.JsonTensorError as error:
        raise _invalid(str(error)) from None


def _outputs_json(outputs: dict[str, np.ndarray], row_format: bool) -> str:
    """json_tensor.cc's MakeRowFormatJsonFromTensors / MakeColumnarFormatJsonFromTensors."""
    encoded = {
        alias: rest_format.encode_tensor(array, rest_format.is_bytes_output(alias))
        for alias, array in sorted(outputs.items())
    }
    if not row_format:
        single = len(encoded) == 1
        return rest_format.json_number_dumps(
            {"outputs": next(iter(encoded.values())) if single else encoded}
        )
    sizes = set()
    for alias, array in sorted(outputs.items()):
        if array.ndim == 0:
            raise _invalid(f"Tensor name: {alias} has no shape information ")
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise _invalid(f"Tensor outputs have inconsistent batch sizes: {sorted(sizes)}")
    batch = sizes.pop() if sizes else 0
    if len(encoded) == 1:
        predictions = next(iter(encoded.values()))
    else:
        predictions = [
            {alias: value[item] for alias, value in encoded.items()} for item in range(batch)
        ]
    return rest_format.json_number_dumps({"predictions": predictions})


def _numpy_dtype(dtype: int) -> np.dtype:
    name = types_pb2.DataType.Name(dtype)
    for wire in contract.WIRE_TYPES:
        if wire.name == name and wire.numpy is not None:
            return wire.numpy
    raise StatusError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"Conversion of JSON Value to type: {name.removeprefix('DT_').lower()}",
    )


def _tf_dtype(dtype: np.dtype) -> tf.DType:
    return tf.string if dtype == np.dtype(object) else tf.as_dtype(dtype)


def _shape(array: np.ndarray) -> str:
    return "[" + ",".join(str(size) for size in array.shape) + "]"


def _invalid(message: str) -> StatusError:
    return StatusError(grpc.StatusCode.INVALID_ARGUMENT, message)
