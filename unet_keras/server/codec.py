"""Tensors out of requests and into responses, as TensorFlow Serving writes them, with a
request's memory bounded by the bytes it carries."""

from __future__ import annotations

import math

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from unet_keras import contract
from unet_keras.server.status import StatusError

# Tensor::AsProtoField: the repeated field that carries each dtype's values, and the view
# of the values that field holds (bit patterns for half floats, pairs for complex).
_WIRE = {getattr(types_pb2, wire.name): wire for wire in contract.WIRE_TYPES}
# Values turned into Python objects at a time when a response is written: the typed field
# takes them in chunks, so a large output never exists as one list of Python numbers.
_CHUNK = 1 << 16


def type_name(dtype: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT -> 'float'."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def declared_shape(alias: str, proto: tensor_pb2.TensorProto) -> list[int]:
    """A request tensor's shape, checked to be fully known: INVALID_ARGUMENT otherwise."""
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(size < 0 for size in shape):
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}")
    return shape


def check_carried(alias: str, proto: tensor_pb2.TensorProto) -> None:
    """Refuses a tensor whose shape holds more values than the request carries.

    TensorFlow fills in the values a TensorProto leaves out (repeating its last one), so a
    request of a few bytes could claim gigabytes; here every value must be sent, which
    bounds a request's memory by its size. (TF Serving fills; this server refuses.)
    """
    wire = _WIRE.get(proto.dtype)
    if wire is None:  # DT_RESOURCE, DT_VARIANT, ...: nothing a request can hold
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}")
    shape = declared_shape(alias, proto)
    elements = math.prod(shape)
    value_bytes = (wire.numpy if wire.numpy is not None else wire.bit_view).itemsize
    if proto.tensor_content and wire.name != "DT_STRING":
        carried = len(proto.tensor_content) // value_bytes
    else:
        carried = len(getattr(proto, wire.field))
        if wire.bit_view is not None:
            carried = carried * wire.bit_view.itemsize // value_bytes
    if carried != elements:
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {alias}: shape {shape} holds {elements} values but the request carries "
            f"{carried}; send every value (this server does not fill in missing ones)",
        )


def as_proto_field(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    """An output as Tensor::AsProtoField writes it: values in the typed field of `dtype`
    (a tensorflow.DataType enum value, the signature's)."""
    array = np.asarray(array)
    wire = _WIRE.get(dtype)
    if wire is None:
        return tf.make_tensor_proto(array, dtype=dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.dim.extend(proto.tensor_shape.Dim(size=size) for size in array.shape)
    # Strings as objects: a scalar comes back as bytes, and NumPy's bytes dtype drops NULs.
    values = np.asarray(array, object if dtype == types_pb2.DT_STRING else None).ravel()
    if wire.bit_view is not None:
        values = values.view(wire.bit_view)
    field = getattr(proto, wire.field)
    for start in range(0, len(values), _CHUNK):
        field.extend(values[start : start + _CHUNK].tolist())
    return proto
