"""TensorFlow Serving's JSON tensors (its REST API), both ways; TF-free.

What util/json_tensor.cc reads and writes: a tensor is a value or nested lists of values,
all leaves at the depth of its rank; a binary string is `{"b64": "<base64>"}`; numbers
may be `NaN`, `Infinity` and `-Infinity`. An output whose name ends in `_bytes` is written
as base64. The local server and the client's REST transport both use these functions.

A request's cost stays linear in its size: a tensor is read in one pass over its leaves
into one array (never one array per value), and nesting deeper than NumPy's 64
dimensions is refused before any walk.

Stricter than TF Serving: an integer outside its dtype's range is refused (TF Serving
wraps it), a tensor of more than 64 dimensions is refused (TensorFlow allows 254), and an
output string that is not UTF-8 is sent as base64 (TF Serving writes the raw bytes into
the JSON text, which no JSON parser reads). An integer too large for a double is refused
with the message of TF Serving's JSON parser ("Number too big to be stored in double.").
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sys
from typing import Any

import numpy as np

BASE64_KEY = "b64"
BYTES_SUFFIX = "_bytes"
# What json_tensor.cc shows of an offending value in an error message.
_SHOWN = 256
# NumPy's limit on an array's dimensions (TensorFlow's is 254).
MAX_RANK = 64


class JsonTensorError(ValueError):
    """A JSON value that is not a tensor of the expected dtype; the message is TF Serving's."""


def shown(value: Any) -> str:
    """A value for an error message, cut as TF Serving cuts it."""
    try:
        text = json.dumps(value, separators=(",", ":"), default=repr)
    except RecursionError:  # nested past Python's stack: the message must not fail too
        return "[[[..."
    return text if len(text) <= _SHOWN else text[:_SHOWN]


def is_base64_object(value: Any) -> bool:
    """`{"b64": "..."}` and nothing else."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BASE64_KEY), str)


def json_shape(value: Any) -> list[int]:
    """The shape nested lists claim, read along the first element (GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def decode_tensor(value: Any, dtype: np.dtype) -> np.ndarray:
    """A JSON value as an array of `dtype` (object for strings: bytes), checked as
    json_tensor.cc's FillTensorProto checks it; JsonTensorError otherwise."""
    dtype = np.dtype(dtype)
    if not isinstance(value, list):  # a scalar or {"b64": ...}: no walk, no object array
        return _from_leaves([value], [], dtype)
    shape = json_shape(value)
    if len(shape) > MAX_RANK:
        raise JsonTensorError(
            f"JSON Value: a list nested {len(shape)} levels deep; a tensor may have at most "
            f"{MAX_RANK} dimensions here"
        )
    try:
        # NumPy walks dense nested lists in C; anything else takes the checking walk.
        dense = np.array(value, dtype=object)
    except ValueError:
        dense = None
    if dense is not None and list(dense.shape) == shape:
        leaves = dense.ravel().tolist()
        if any(isinstance(leaf, list) for leaf in leaves):
            dense = None
    if dense is None or list(dense.shape) != shape:
        leaves = []
        _collect(value, shape, 0, leaves)
    return _from_leaves(leaves, shape, dtype)


def _from_leaves(leaves: list[Any], shape: list[int], dtype: np.dtype) -> np.ndarray:
    """The leaves, checked against `dtype`, as one array of `shape`."""
    if dtype == np.dtype(object):
        array = np.empty(len(leaves), object)
        array[:] = [_bytes_leaf(leaf) for leaf in leaves]
        return array.reshape(shape)
    kinds = set(map(type, leaves))
    if dtype == np.bool_:
        allowed: tuple[type, ...] = (bool,)
    elif dtype.kind == "f":
        allowed = (int, float)
    else:
        allowed = (int,)
    for kind in kinds - set(allowed):
        leaf = next(leaf for leaf in leaves if type(leaf) is kind)
        raise JsonTensorError(
            f"JSON Value: {shown(leaf)} Type: {_json_type(leaf)} is not of expected type: "
            f"{_type_name(dtype)}"
        )
    if dtype.kind in "iu" and leaves:
        info = np.iinfo(dtype)
        low, high = min(leaves), max(leaves)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise JsonTensorError(
                f"JSON Value: {bad} is out of the range of {_type_name(dtype)} "
                f"[{info.min}, {info.max}]"
            )
    try:
        return np.array(leaves, dtype).reshape(shape)
    except OverflowError:  # an int past a double's range, for a float dtype
        bad = next((leaf for leaf in leaves if abs(leaf) > sys.float_info.max), leaves[0])
        raise JsonTensorError(
            f"JSON Value: {shown(bad)} Number too big to be stored in double."
        ) from None


def _collect(value: Any, shape: list[int], level: int, leaves: list[Any]) -> None:
    """Flattens nested lists into `leaves`, checking that they are dense along `shape`."""
    if not isinstance(value, list):
        if level != len(shape):
            raise JsonTensorError(
                f"JSON Value: {shown(value)} found at incorrect level: {level + 1} in the JSON "
                f"DOM. Expected at level: {len(shape)}"
            )
        leaves.append(value)
        return
    if level >= len(shape):
        raise JsonTensorError(
            f"Encountered list at unexpected level: {level} expected < {len(shape)}"
        )
    if len(value) != shape[level]:
        raise JsonTensorError(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected "
            f"size: {shape[level]}"
        )
    if level == len(shape) - 1:
        if any(isinstance(item, list) for item in value):
            raise JsonTensorError(
                f"Encountered list at unexpected level: {level + 1} expected < {len(shape)}"
            )
        leaves.extend(value)
        return
    for item in value:
        _collect(item, shape, level + 1, leaves)


def _bytes_leaf(leaf: Any) -> bytes:
    if isinstance(leaf, str):
        try:
            return leaf.encode()
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 text holds it
            raise JsonTensorError(
                f"JSON Value: {shown(leaf)} is not valid UTF-8 text (a lone surrogate)"
            ) from None
    if is_base64_object(leaf):
        try:
            return base64.b64decode(leaf[BASE64_KEY], validate=True)
        except (binascii.Error, ValueError):
            raise JsonTensorError("Unable to base64 decode") from None
    if isinstance(leaf, dict):
        raise JsonTensorError(f"JSON Value: {shown(leaf)} not formatted correctly for base64 data")
    raise JsonTensorError(
        f"JSON Value: {shown(leaf)} Type: {_json_type(leaf)} is not of expected type: string"
    )


def encode_tensor(array: np.ndarray, as_bytes: bool = False) -> Any:
    """An array as TF Serving writes a tensor: nested lists; strings as text, or as
    `{"b64": ...}` when `as_bytes` (or when they are not UTF-8)."""
    if array.dtype == np.dtype(object) or array.dtype.kind == "S":
        flat = [_encode_bytes(bytes(item), as_bytes) for item in array.ravel()]
        nested = np.empty(len(flat), object)
        nested[:] = flat
        return nested.reshape(array.shape).tolist()
    if array.dtype.kind == "f":
        # float64 holds every float32 exactly: the text parses back to the same value.
        return array.astype(np.float64).tolist()
    return array.tolist()


def _encode_bytes(value: bytes, as_bytes: bool) -> Any:
    if not as_bytes:
        try:
            return value.decode()
        except UnicodeDecodeError:
            pass
    return {BASE64_KEY: base64.b64encode(value).decode("ascii")}


def json_number_dumps(value: Any) -> str:
    """JSON text as TF Serving writes it: NaN and infinities as bare tokens."""
    return json.dumps(value, allow_nan=True, separators=(",", ":"))


def is_bytes_output(name: str) -> bool:
    """Whether TF Serving's REST API sends a string output as base64: its name says so."""
    return name.endswith(BYTES_SUFFIX)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double" if math.isfinite(value) else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


# TensorFlow's DataTypeString where it differs from NumPy's name.
_TF_NAMES = {"object": "string", "float32": "float", "float64": "double", "float16": "half"}


def _type_name(dtype: np.dtype) -> str:
    return _TF_NAMES.get(dtype.name, dtype.name)
