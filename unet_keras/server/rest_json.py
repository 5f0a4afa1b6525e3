"""The JSON of REST Predict calls: a body into a PredictRequest's tensors, and outputs back
into JSON, as TF Serving's util/json_tensor.cc does (row `instances` and columnar `inputs`,
`{"b64": ...}`, `predictions` and `outputs`); the tensors themselves are
`unet_keras.rest_format`'s. See `unet_keras.server.rest_api` for what differs from TF
Serving.
"""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from unet_keras import contract, rest_format
from unet_keras.server import requests
from unet_keras.server.status import StatusError

_SURROGATE_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*(\\u[dD][89a-fA-F][0-9a-fA-F]{2})")
_LOW_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def parse_body(body: bytes | bytearray, body_error: str | None = None) -> dict[str, Any]:
    """json_tensor.cc's ParseJson: UTF-8 JSON text whose top level is an object."""
    if not body:
        why = f" ({body_error})" if body_error else ""
        raise invalid(f"JSON Parse error: The document is empty{why}")
    try:
        # Strict UTF-8: json.loads(bytes) would let encoded surrogates through ("surrogatepass").
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalid(
            f"JSON Parse error: Invalid encoding in string. at offset: {error.start}"
        ) from None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: nesting past Python's
        raise invalid(f"JSON Parse error: {error}") from None
    del text
    _check_surrogates(body)
    if not isinstance(document, dict):
        raise invalid(f"JSON Value: {rest_format.shown(document)} Is not object")
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
        raise invalid(
            f"JSON Parse error: The surrogate pair in string is invalid. at offset: {start}"
        )


def fill_inputs(
    document: dict[str, Any],
    dtypes: dict[str, np.dtype],
    request: predict_pb2.PredictRequest,
    max_batch: int | None = None,
) -> bool:
    """The request's inputs from `instances` (row format: True) or `inputs` (columnar)."""
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise invalid(
            f"JSON Value: {rest_format.shown(document)} Not formatted correctly expecting "
            "only one of 'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        arrays = _instances(document, dtypes, max_batch)
    elif has_inputs:
        arrays = _columns(document["inputs"], dtypes, max_batch)
    else:
        raise invalid("Missing 'inputs' or 'instances' key")
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
        raise invalid(
            f"JSON Value: {rest_format.shown(document)} Expecting 'instances' to be an list/array"
        )
    if not instances:
        raise invalid(f"JSON Value: {rest_format.shown(document)} No values in 'instances' array")
    named = _is_named(instances[0])
    if not named and len(dtypes) > 1:
        raise invalid(
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
    raise invalid(f"Failed to process 'instances' list. Error: INVALID_ARGUMENT: {problem}")


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
            raise invalid(f"Expecting {kind} at item {index} of input list")
        values = instance if named else {next(iter(dtypes)): instance}
        for alias, value in values.items():
            if alias not in dtypes:
                raise invalid(
                    f"Failed to process element: {index} key: {alias} of 'instances' list. "
                    f"Error: INVALID_ARGUMENT: JSON object: does not have named input: {alias}"
                )
            try:
                array = rest_format.decode_tensor(value, dtypes[alias])
            except rest_format.JsonTensorError as error:
                where = f"{index} key: {alias}" if named else str(index)
                raise invalid(
                    f"Failed to process element: {where} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: {error}"
                ) from None
            reference = first.setdefault(alias, array)
            if array.shape != reference.shape:
                if array.size != reference.size:
                    message = f"Expecting tensor size: {reference.size} but got: {array.size}"
                else:
                    message = f"Expecting shape {_shape(reference)} but got: {_shape(array)}"
                raise invalid(
                    f"Failed to process element: {index} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: {message}"
                )
        if named and set(instance) != set(dtypes):
            raise invalid(
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
                raise invalid(
                    "inputs is a plain value/list, but expecting an object as multiple input "
                    "tensors required as per tensorinfo_map"
                )
            alias = next(iter(dtypes))
            _check_batch(alias, value, max_batch)
            return {alias: rest_format.decode_tensor(value, dtypes[alias])}
        arrays = {}
        for alias, dtype in sorted(dtypes.items()):
            if alias not in value:
                raise invalid(f"Missing named input: {alias} in 'inputs' object.")
            _check_batch(alias, value[alias], max_batch)
            arrays[alias] = rest_format.decode_tensor(value[alias], dtype)
        return arrays
    except rest_format.JsonTensorError as error:
        raise invalid(str(error)) from None


def outputs_json(outputs: dict[str, np.ndarray], row_format: bool) -> str:
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
            raise invalid(f"Tensor name: {alias} has no shape information ")
        sizes.add(array.shape[0])
    if len(sizes) > 1:
        raise invalid(f"Tensor outputs have inconsistent batch sizes: {sorted(sizes)}")
    batch = sizes.pop() if sizes else 0
    if len(encoded) == 1:
        predictions = next(iter(encoded.values()))
    else:
        predictions = [
            {alias: value[item] for alias, value in encoded.items()} for item in range(batch)
        ]
    return rest_format.json_number_dumps({"predictions": predictions})


def numpy_dtype(dtype: int) -> np.dtype:
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


def invalid(message: str) -> StatusError:
    return StatusError(grpc.StatusCode.INVALID_ARGUMENT, message)
