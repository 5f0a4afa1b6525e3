"""The error a request or a version load ends with, carrying TensorFlow Serving's status.

One type for the whole server: the gRPC services answer with its code and message (cut at
1024 characters, as TF Serving's grpc_status_util.cc does), GetModelStatus reports it per
version.
"""

from __future__ import annotations

import re

import grpc
import tensorflow as tf
from tensorflow_serving.apis import status_pb2

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}

# What the eager runtime wraps around a graph error's own text.
_TF_MESSAGE_NOISE = re.compile(
    r"^Graph execution error:\s*(Detected at node \S+ defined at \(most recent call last\):\n"
    r"<stack traces unavailable>\n)?|\s*\[Op:[^\]]*\]$"
)


class StatusError(Exception):
    """A failed request or load, with the gRPC status code TF Serving gives it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def from_tf(cls, error: tf.errors.OpError) -> StatusError:
        """The error a graph raised, with its code and its own message."""
        return cls(_GRPC_CODES[error.error_code], _TF_MESSAGE_NOISE.sub("", error.message))

    def status(self) -> status_pb2.StatusProto:
        """As a StatusProto (GetModelStatus' per-version status)."""
        return status_pb2.StatusProto(error_code=self.code.value[0], error_message=self.message)
