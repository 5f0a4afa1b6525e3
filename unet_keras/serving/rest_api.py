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
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from unet_keras import contract, rest_format
from unet_keras.serving import requests
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
# A \uXXXX escape of a UTF-16 surrogate: an odd run of backslashes before the `u`.
_SURROGATE_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*(\\u[dD][89a-fA-F][0-9a-fA-F]{2})")
_LOW_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


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
            document = _parse(body, body_error)
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
        # Counted only where a signature takes images (the gRPC port's rule).
        if not any(requests.holds_images(info) for info in inputs.values()):
            max_batch = None
        row_format = _fill_inputs(document, dtypes, request, max_batch)
        # As TF Serving's RunOptions.timeout_in_ms: the run gets the whole timeout.
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms > 0 else None
        response = predict(servable, request, deadline, max_batch)
    outputs = {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}
    return _outputs_json(outputs, row_format)


def _parse(body: bytes | bytearray, body_error: str | None = None) -> dict[str, Any]:
    """json_tensor.cc's ParseJson: UTF-8 JSON text whose top level is an object."""
    if not body:
        why = f" ({body_error})" if body_error else ""
        raise _invalid(f"JSON Parse error: The document is empty{why}")
    try:
        # Strict UTF-8: json.loads(bytes) would let encoded surrogates through ("surrogatepass").
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _invalid(
            f"JSON Parse error: Invalid encoding in string. at offset: {error.start}"
        ) from None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: nesting past Python's
        raise _invalid(f"JSON Parse error: {error}") from None
    del text
    _check_surrogates(body)
    if not isinstance(document, dict):
        raise _invalid(f"JSON Value: {rest_format.shown(document)} Is not object")
    return document


def _check_surrogates(body: bytes | bytearray) -> None:
    """Refuses a \\uD800-\\uDFFF escape that is not half of a pair, as rapidjson does:
    Python would parse it into a string that no UTF-8 (or protobuf) can hold."""
    if b"\\u" not in body:
        return
    paired_at = -1  # where the low half of a pair starts
    for match in _SURROGATE_ESCAPE.finditer(body):
        start, end = match.span(1)
        high = match.group(1)[3:4] in b"89abAB"
        if not high and start == paired_at:
            continue
        if high and _LOW_SURROGATE_ESCAPE.match(body, end):
            paired_at = end
            continue
        raise _invalid(
            f"JSON Parse error: The surrogate pair in string is invalid. at offset: {start}"
        )


def _fill_inputs(
    document: dict[str, Any],
    dtypes: dict[str, np.dtype],
    request: predict_pb2.PredictRequest,
    max_batch: int | None = None,
) -> bool:
    """The request's inputs from `instances` (row format: True) or `inputs` (columnar)."""
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise _invalid(
            f"JSON Value: {rest_format.shown(document)} Not formatted correctly expecting "
            "only one of 'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        arrays = _instances(document, dtypes, max_batch)
    elif has_inputs:
        arrays = _columns(document["inputs"], dtypes, max_batch)
    else:
        raise _invalid("Missing 'inputs' or 'instances' key")
    for alias, array in arrays.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(array, dtype=_tf_dtype(dtypes[alias])))
    return has_instances


def _check_batch(alias: str, value: Any, max_batch: int | None) -> None:
    """Refuses a JSON tensor longer than `max_batch` along its first dimension, before it
    is decoded (the gRPC port's limit and message)."""
    if max_batch is not None and isinstance(value, list) and len(value) > max_batch:
        shape_only = tensor_pb2.TensorProto()
        shape_only.tensor_shape.dim.add(size=len(value))
        requests.check_batch(alias, shape_only, max_batch)


def _is_named(value: Any) -> bool:
    """An instance that names its inputs: an object other than {"b64": ...}."""
    return isinstance(value, dict) and not rest_format.is_base64_object(value)


def _instances(
    document: dict[str, Any], dtypes: dict[str, np.dtype], max_batch: int | None = None
) -> dict[str, np.ndarray]:
    """json_tensor.cc's FillTensorMapFromInstancesList.

    Each input's values over all instances are decoded as one tensor, in one pass; only
    when that fails are the instances walked one by one, to name the one at fault.
    """
    instances = document["instances"]
    if not isinstance(instances, list):
        raise _invalid(
            f"JSON Value: {rest_format.shown(document)} Expecting 'instances' to be an list/array"
        )
    if not instances:
        raise _invalid(f"JSON Value: {rest_format.shown(document)} No values in 'instances' array")
    named = _is_named(instances[0])
    if not named and len(dtypes) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    _check_batch(min(dtypes), instances, max_batch)
    columns = _instance_columns(instances, named, dtypes)
    if columns is not None:
        try:
            return {
                alias: rest_format.decode_tensor(values, dtypes[alias])
                for alias, values in columns.items()
            }
        except rest_format.JsonTensorError as error:
            problem = str(error)
    else:
        problem = "the instances do not all name the same inputs"
    _find_bad_instance(instances, named, dtypes)
    raise _invalid(f"Failed to process 'instances' list. Error: INVALID_ARGUMENT: {problem}")


def _instance_columns(
    instances: list[Any], named: bool, dtypes: dict[str, np.dtype]
) -> dict[str, list[Any]] | None:
    """Each input's values over all instances; None if an instance does not name exactly
    the signature's inputs (the walk then says which)."""
    if not named:
        return {next(iter(dtypes)): instances}
    columns: dict[str, list[Any]] = {alias: [] for alias in dtypes}
    for instance in instances:
        if not _is_named(instance) or instance.keys() != columns.keys():
            return None
        for alias, value in instance.items():
            columns[alias].append(value)
    return columns


def _find_bad_instance(instances: list[Any], named: bool, dtypes: dict[str, np.dtype]) -> None:
    """Raises json_tensor.cc's error for the first instance at fault, walking them one by
    one in its order; each instance is decoded and dropped, so the walk holds no more
    memory than one instance."""
    first: dict[str, np.ndarray] = {}
    for index, instance in enumerate(instances):
        if named != _is_named(instance):
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
            reference = first.setdefault(alias, array)
            if array.shape != reference.shape:
                if array.size != reference.size:
                    message = f"Expecting tensor size: {reference.size} but got: {array.size}"
                else:
                    message = f"Expecting shape {_shape(reference)} but got: {_shape(array)}"
                raise _invalid(
                    f"Failed to process element: {index} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: {message}"
                )
        if named and set(instance) != set(dtypes):
            raise _invalid(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{rest_format.shown(instance)} keys must be equal to: {','.join(sorted(dtypes))}"
            )


def _columns(
    value: Any, dtypes: dict[str, np.dtype], max_batch: int | None = None
) -> dict[str, np.ndarray]:
    """json_tensor.cc's FillTensorMapFromInputsMap."""
    try:
        if not isinstance(value, dict) or rest_format.is_base64_object(value):
            if len(dtypes) > 1:
                raise _invalid(
                    "inputs is a plain value/list, but expecting an object as multiple input "
                    "tensors required as per tensorinfo_map"
                )
            alias = next(iter(dtypes))
            _check_batch(alias, value, max_batch)
            return {alias: rest_format.decode_tensor(value, dtypes[alias])}
        arrays = {}
        for alias, dtype in sorted(dtypes.items()):
            if alias not in value:
                raise _invalid(f"Missing named input: {alias} in 'inputs' object.")
            _check_batch(alias, value[alias], max_batch)
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
