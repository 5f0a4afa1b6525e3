"""Tensors out of requests and into responses, as TensorFlow Serving writes them."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from unet_keras import contract

# Tensor::AsProtoField: the repeated field that carries each dtype's values, and the view
# of the values that field holds (bit patterns for half floats, pairs for complex).
_WIRE = {getattr(types_pb2, wire.name): wire for wire in contract.WIRE_TYPES}


def type_name(dtype: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT -> 'float'."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def as_proto_field(tensor: tf.Tensor) -> tensor_pb2.TensorProto:
    """A tensor as Tensor::AsProtoField writes it: values in the dtype's typed field."""
    dtype = tensor.dtype.as_datatype_enum
    wire = _WIRE.get(dtype)
    if wire is None:
        return tf.make_tensor_proto(tensor)
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor.shape.as_proto())
    # Strings as objects: a scalar comes back as bytes, and NumPy's bytes dtype drops NULs.
    values = np.asarray(tensor.numpy(), object if dtype == types_pb2.DT_STRING else None).ravel()
    if wire.bit_view is not None:
        values = values.view(wire.bit_view)
    getattr(proto, wire.field).extend(values.tolist())
    return proto
