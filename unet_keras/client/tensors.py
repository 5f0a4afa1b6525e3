"""numpy arrays to and from `tensorflow.TensorProto`, without TensorFlow.

Arrays are sent as `tensor_content` (raw little-endian bytes, the compact form) and
strings as `string_val`. Reading accepts every form TF writes: `tensor_content` or the
typed `*_val` field of the dtype; with fewer typed values than elements, the last one
fills the rest (TF's convention, so one value stands for a constant tensor).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from unet_keras.client.messages import TensorProto, enum_values
from unet_keras.contract import WIRE_TYPES, WireType

_DT = enum_values("tensorflow.DataType")
# The wire types NumPy can hold (bfloat16 needs ml_dtypes, which the client goes without).
_KINDS = [wire for wire in WIRE_TYPES if wire.numpy is not None]
_BY_ENUM = {_DT[wire.name]: wire for wire in _KINDS}
_BY_DTYPE = {wire.numpy: wire for wire in _KINDS}


def dtype_name(dtype: int) -> str:
    """The numpy name of a `tensorflow.DataType` value ("uint8"), else its TF name."""
    if dtype in _BY_ENUM:
        kind = _BY_ENUM[dtype]
        return "string" if kind.name == "DT_STRING" else kind.numpy.name
    names = {number: name for name, number in _DT.items()}
    return names.get(dtype, f"DataType {dtype}")


def make_tensor_proto(values: Any) -> Any:
    """A `tensorflow.TensorProto` holding `values` (an array, or anything numpy takes)."""
    array = np.asarray(values)
    proto = TensorProto()
    proto.tensor_shape.dim.extend(proto.tensor_shape.Dim(size=n) for n in array.shape)
    if array.dtype.kind in "SUO":
        proto.dtype = _DT["DT_STRING"]
        proto.string_val.extend(_as_bytes(value) for value in array.ravel())
        return proto
    kind = _BY_DTYPE.get(array.dtype.newbyteorder("="))
    if kind is None:
        supported = ", ".join(sorted(k.numpy.name for k in _KINDS if k.name != "DT_STRING"))
        raise TypeError(
            f"cannot send a {array.dtype} array: expected one of {supported}, or strings"
        )
    proto.dtype = _DT[kind.name]
    proto.tensor_content = np.ascontiguousarray(array, kind.numpy.newbyteorder("<")).tobytes()
    return proto


def make_ndarray(proto: Any, *, fill: bool = True) -> np.ndarray:
    """The numpy array a `tensorflow.TensorProto` holds (strings as an object array of bytes).

    With `fill` (TensorFlow's convention) typed values fewer than the shape holds are
    extended by repeating the last one; without it they must all be there, which bounds
    the array by the message's size (for what a server sends back).
    """
    kind = _BY_ENUM.get(proto.dtype)
    if kind is None:
        raise TypeError(f"cannot read a {dtype_name(proto.dtype)} tensor into numpy")
    if proto.tensor_shape.unknown_rank:
        raise ValueError("cannot read a tensor of unknown rank: its shape has no dimensions")
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if any(n < 0 for n in shape):
        raise ValueError(f"cannot read a tensor of partly unknown shape {list(shape)}")
    size = math.prod(shape)
    if proto.tensor_content and kind.name != "DT_STRING":
        wire = kind.numpy.newbyteorder("<")
        if len(proto.tensor_content) != size * wire.itemsize:
            raise ValueError(
                f"tensor_content holds {len(proto.tensor_content)} bytes; shape "
                f"{list(shape)} of {kind.numpy.name} needs {size * wire.itemsize}"
            )
        values = np.frombuffer(proto.tensor_content, wire).astype(kind.numpy)
        return values.reshape(shape)
    values = _typed_values(proto, kind)
    if not fill and len(values) != size:
        raise ValueError(
            f"a {kind.name} tensor of shape {list(shape)} holds {size} values but carries "
            f"{len(values)}"
        )
    return _fill(values, size, kind.name).reshape(shape)


def _typed_values(proto: Any, kind: WireType) -> np.ndarray:
    """The values of a typed `*_val` field, as a flat array of the tensor's dtype."""
    field = getattr(proto, kind.field)
    if kind.name == "DT_STRING":
        values = np.empty(len(field), object)
        values[:] = list(field)
        return values
    if kind.bit_view is not None:
        # half_val carries bit patterns, the complex fields (real, imaginary) pairs.
        return np.array(field, kind.bit_view).view(kind.numpy)
    return np.array(field, kind.numpy)


def _fill(values: np.ndarray, size: int, name: str) -> np.ndarray:
    """`values` extended to `size` elements by repeating the last one (zeros if none)."""
    if len(values) > size:
        raise ValueError(f"{name} tensor holds {len(values)} values for {size} elements")
    if len(values) == size:
        return values
    if len(values) == 0:
        return np.full(size, b"" if name == "DT_STRING" else 0, values.dtype)
    return np.concatenate([values, np.full(size - len(values), values[-1], values.dtype)])


def _as_bytes(value: Any) -> bytes:
    """One string element as bytes (str is encoded as UTF-8)."""
    if isinstance(value, bytes):  # np.bytes_ included
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"string tensors take str or bytes elements, got {type(value).__name__}")
