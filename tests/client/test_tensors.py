"""numpy arrays to and from TensorProto without TensorFlow, read as TensorFlow reads them."""

from __future__ import annotations

import types

import numpy as np
import pytest

from unet_keras.client import make_ndarray, make_tensor_proto, messages

DTYPES = ["uint8", "uint16", "int8", "int16", "int32", "int64", "uint32", "uint64"]
DTYPES += ["float16", "float32", "float64", "complex64", "complex128", "bool"]


def sample(dtype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Values spanning the dtype's range, extremes included."""
    size = int(np.prod(shape))
    if dtype == "bool":
        return (np.arange(size) % 3 == 0).reshape(shape)
    if np.dtype(dtype).kind in "fc":
        info = np.finfo(dtype)
        values = np.array([info.min, -1.5, 0.0, 0.25, info.max, info.tiny], dtype)
        if np.dtype(dtype).kind == "c":
            values = values + 1j * values[::-1]
    else:
        info = np.iinfo(dtype)
        values = np.array([info.min, 0, 1, info.max // 2, info.max, info.min + 1], dtype)
    return np.resize(values, shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3), (), (0, 4), (1, 2, 3, 1)])
def test_tensor_content_round_trips_and_matches_tensorflow(
    tf: types.SimpleNamespace, dtype: str, shape: tuple[int, ...]
) -> None:
    array = sample(dtype, shape)
    proto = make_tensor_proto(array)
    back = make_ndarray(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    theirs = tf.tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    np.testing.assert_array_equal(tf.tf.make_ndarray(theirs), array)
    from_tf = make_ndarray(
        messages.TensorProto.FromString(tf.tf.make_tensor_proto(array).SerializeToString())
    )
    assert from_tf.dtype == array.dtype
    np.testing.assert_array_equal(from_tf, array)


TYPED_FIELDS = {
    "uint8": "int_val",
    "uint16": "int_val",
    "int8": "int_val",
    "int16": "int_val",
    "int32": "int_val",
    "int64": "int64_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "float32": "float_val",
    "float64": "double_val",
    "bool": "bool_val",
}


@pytest.mark.parametrize("dtype", [*TYPED_FIELDS, "float16"])
def test_typed_fields_are_read_like_tensorflow(tf: types.SimpleNamespace, dtype: str) -> None:
    array = sample(dtype)
    proto = messages.TensorProto(dtype=tf.tf.as_dtype(dtype).as_datatype_enum)
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=3)
    if dtype == "float16":
        proto.half_val.extend(array.view(np.uint16).ravel().tolist())
    else:
        getattr(proto, TYPED_FIELDS[dtype]).extend(array.ravel().tolist())
    np.testing.assert_array_equal(make_ndarray(proto), array)
    theirs = tf.tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    np.testing.assert_array_equal(tf.tf.make_ndarray(theirs), array)
    # One value stands for the whole tensor; fewer than all repeat the last.
    del getattr(proto, TYPED_FIELDS.get(dtype, "half_val"))[2:]
    expected = np.resize(array.ravel()[:2], 6)
    expected[2:] = array.ravel()[1]
    np.testing.assert_array_equal(make_ndarray(proto), expected.reshape(2, 3))
    theirs = tf.tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    np.testing.assert_array_equal(tf.tf.make_ndarray(theirs), expected.reshape(2, 3))


def test_strings_scalars_and_broadcasts(tf: types.SimpleNamespace) -> None:
    strings = np.array([["a", "bé"], ["", "d"]])
    proto = make_tensor_proto(strings)
    assert list(proto.string_val) == [b"a", "bé".encode(), b"", b"d"]
    back = make_ndarray(proto)
    assert back.dtype == object and back.tolist() == [[b"a", "bé".encode()], [b"", b"d"]]
    theirs = tf.tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    assert tf.tf.make_ndarray(theirs).tolist() == back.tolist()
    scalar = make_ndarray(make_tensor_proto(b'{"a": 1}'))
    assert scalar.shape == () and scalar[()] == b'{"a": 1}'

    constant = messages.TensorProto(dtype=1, float_val=[0.5])
    constant.tensor_shape.dim.add(size=2)
    constant.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(make_ndarray(constant), np.full((2, 2), 0.5, np.float32))
    empty = messages.TensorProto(dtype=3)
    empty.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(make_ndarray(empty), np.zeros(3, np.int32))
    words = messages.TensorProto(dtype=7, string_val=[b"x"])
    words.tensor_shape.dim.add(size=3)
    assert make_ndarray(words).tolist() == [b"x", b"x", b"x"]


def test_malformed_tensors_name_the_problem() -> None:
    with pytest.raises(TypeError, match="datetime64"):
        make_tensor_proto(np.zeros(2, "datetime64[s]"))
    with pytest.raises(TypeError, match="DT_BFLOAT16"):
        make_ndarray(messages.TensorProto(dtype=14))
    short = make_tensor_proto(np.zeros((2, 2), np.float32))
    short.tensor_content = short.tensor_content[:-4]
    with pytest.raises(ValueError, match=r"holds 12 bytes.*needs 16"):
        make_ndarray(short)
    many = messages.TensorProto(dtype=3, int_val=[1, 2, 3])
    many.tensor_shape.dim.add(size=2)
    with pytest.raises(ValueError, match="3 values for 2 elements"):
        make_ndarray(many)
    unknown = messages.TensorProto(dtype=1)
    unknown.tensor_shape.unknown_rank = True
    with pytest.raises(ValueError, match="unknown rank"):
        make_ndarray(unknown)


def test_big_endian_arrays_are_sent_little_endian() -> None:
    array = np.arange(6, dtype=">u2").reshape(2, 3)
    proto = make_tensor_proto(array)
    assert proto.tensor_content == array.astype("<u2").tobytes()
    np.testing.assert_array_equal(make_ndarray(proto), array)
