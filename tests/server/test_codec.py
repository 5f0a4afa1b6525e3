"""unet_keras.server.codec: outputs in the typed fields TF Serving writes."""

import numpy as np
import pytest
import tensorflow as tf

from unet_keras.server.codec import as_proto_field


@pytest.mark.parametrize(
    "values",
    [
        np.array([[1.5, -2.25]], np.float16),
        np.array([1.5, -2.25], tf.bfloat16.as_numpy_dtype),
        np.array([1 + 2j, -3j], np.complex64),
        np.array([2**40, -1], np.int64),
        np.array([[True], [False]]),
        np.array([0, 255], np.uint8),
        np.array(7, np.int32),
        np.array([b"\x89PNG\x00", b""], object),
        np.array(b"ends in NUL\x00", object),
    ],
    ids=lambda values: f"{values.dtype}{list(values.shape)}",
)
def test_outputs_in_typed_fields_round_trip(values: np.ndarray) -> None:
    proto = as_proto_field(values, tf.constant(values).dtype.as_datatype_enum)
    assert not proto.tensor_content
    decoded = tf.make_ndarray(proto)
    assert decoded.shape == values.shape
    assert decoded.tolist() == values.tolist()
