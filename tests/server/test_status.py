"""unet_keras.server.status: errors keep TensorFlow's code and their own message."""

import grpc
import pytest
import tensorflow as tf

from unet_keras.server.status import StatusError


def test_a_graph_error_keeps_its_code_and_loses_the_runtimes_wrapping():
    @tf.function
    def failing() -> tf.Tensor:
        tf.debugging.Assert(False, ["image_png: not PNG data"])
        return tf.constant(0)

    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        failing()
    error = StatusError.from_tf(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "image_png: not PNG data" in error.message
    assert not error.message.startswith("Graph execution error")
    assert "[Op:" not in error.message
    status = error.status()
    assert (status.error_code, status.error_message) == (3, error.message)
