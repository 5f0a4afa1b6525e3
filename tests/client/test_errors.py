"""A typed error per gRPC status, with the server's message and the failed call as cause."""

import grpc
import pytest

from unet_keras.client import DeadlineExceededError, InvalidArgumentError, ServingError
from unet_keras.client.errors import error_for, from_rpc_error


class FailedCall(grpc.RpcError):
    """What grpc raises for a call that ended with a status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_each_status_has_its_type_and_keeps_the_message():
    failure = from_rpc_error(FailedCall(grpc.StatusCode.INVALID_ARGUMENT, "bad"), "/m/Predict")
    assert isinstance(failure, InvalidArgumentError)
    assert (failure.code, failure.message, failure.method) == (
        grpc.StatusCode.INVALID_ARGUMENT, "bad", "/m/Predict",
    )  # fmt: skip
    assert str(failure) == "/m/Predict: INVALID_ARGUMENT: bad"
    assert isinstance(failure.__cause__, FailedCall)
    assert isinstance(error_for(grpc.StatusCode.DEADLINE_EXCEEDED, "late"), TimeoutError)
    assert isinstance(error_for(grpc.StatusCode.DEADLINE_EXCEEDED, "late"), DeadlineExceededError)


@pytest.mark.parametrize("code", [grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNKNOWN])
def test_other_statuses_are_serving_errors_with_their_code(code):
    failure = error_for(code, "lost")
    assert type(failure) is ServingError and failure.code == code
