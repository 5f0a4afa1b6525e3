"""Typed exceptions for the gRPC status codes a TF Serving call can end with."""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """A failed call: `code` is the gRPC status, `message` the server's message, verbatim."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, method: str = "", code: grpc.StatusCode | None = None):
        self.message = message
        self.method = method
        if code is not None:
            self.code = code
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{self.code.name}: {message}")


class InvalidArgumentError(ServingError):
    """The server rejected the request (wrong dtype, shape, signature or input name)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(ServingError):
    """No such model, version, label or signature on the server."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(ServingError):
    """The server cannot run the request in its current state."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class UnavailableError(ServingError):
    """The server could not be reached or is not serving yet; retried by default."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(ServingError, TimeoutError):
    """The call (including its retries) ran past its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhaustedError(ServingError):
    """A message over a size limit, or a server out of memory or threads."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class CancelledError(ServingError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class UnimplementedError(ServingError):
    """The server does not offer this method."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(ServingError):
    """The server failed while running the model."""

    code = grpc.StatusCode.INTERNAL


class PermissionDeniedError(ServingError):
    """The caller may not call this method."""

    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(ServingError):
    """The call carried no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        FailedPreconditionError,
        UnavailableError,
        DeadlineExceededError,
        ResourceExhaustedError,
        CancelledError,
        UnimplementedError,
        InternalError,
        PermissionDeniedError,
        UnauthenticatedError,
    )
}


def error_for(code: grpc.StatusCode, message: str, method: str = "") -> ServingError:
    """The typed exception for a status code (ServingError itself for the rest)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return ServingError(message, method=method, code=code)
    return cls(message, method=method)


def from_rpc_error(error: grpc.RpcError, method: str = "") -> ServingError:
    """The typed exception for a failed call of `grpc` or `grpc.aio`, caused by it."""
    failure = error_for(error.code(), error.details() or "", method)
    failure.__cause__ = error
    return failure
