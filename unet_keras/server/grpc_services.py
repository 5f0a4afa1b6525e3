"""TensorFlow Serving's gRPC API for one model's versions: PredictionService.Predict and
GetModelMetadata, ModelService.GetModelStatus, on tensorflow-serving-api's protos, with TF
Serving's status codes and message texts.

Outputs come in the typed value fields (`AsProtoField`, TF Serving's default;
tensor_content only with --enable_serialization_as_tensor_content). As in TF Serving, the
graph's run is bounded by the call's deadline (RunOptions.timeout_in_ms) and cancelled
past it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from concurrent import futures

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from unet_keras import contract
from unet_keras.server import requests
from unet_keras.server.health import ModelHealth
from unet_keras.server.models import ModelRegistry
from unet_keras.server.prediction import predict
from unet_keras.server.prometheus import Metrics
from unet_keras.server.status import StatusError
from unet_keras.server.versions import Servable

_MESSAGE_LIMIT = 1024


def signature_metadata(
    servable: Servable, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadata's answer: every signature of the version's MetaGraphDef."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signatures.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = servable.version
    response.metadata[contract.METADATA_FIELD].Pack(signatures)
    return response


def _abort(context: grpc.ServicerContext, error: StatusError) -> None:
    """Ends the call with the error, its message cut as TF Serving's ToGRPCStatus cuts it."""
    message = error.message
    if len(message) > _MESSAGE_LIMIT:
        message = message[:_MESSAGE_LIMIT] + "...TRUNCATED"
    context.abort(error.code, message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService: Predict and GetModelMetadata (the rest stays UNIMPLEMENTED)."""

    def __init__(
        self,
        manager: ModelRegistry,
        metrics: Metrics | None = None,
        max_request_batch: int | None = None,
    ) -> None:
        self._manager = manager
        self._metrics = metrics
        self._max_request_batch = max_request_batch

    def Predict(  # noqa: N802 (the gRPC method's name)
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        """Runs a signature of the model on the request's inputs."""
        start, status = time.perf_counter(), "OK"
        try:
            requests.require_model_spec(request)
            # The graph's run is cancelled at the caller's deadline, as TF Serving's is.
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            with self._manager.servable(request.model_spec) as servable:
                return predict(servable, request, deadline, self._max_request_batch)
        except StatusError as error:
            status = error.code.name
            _abort(context, error)
        finally:
            if self._metrics is not None:
                self._metrics.request(
                    request.model_spec.name, "Predict", "GRPC", status,
                    (time.perf_counter() - start) * 1e6,
                )  # fmt: skip

    def GetModelMetadata(  # noqa: N802
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """The signatures of a model version."""
        try:
            requests.check_metadata_request(request)
            with self._manager.servable(request.model_spec) as servable:
                return signature_metadata(servable, request)
        except StatusError as error:
            _abort(context, error)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService: GetModelStatus (HandleReloadConfigRequest stays UNIMPLEMENTED)."""

    def __init__(self, manager: ModelRegistry) -> None:
        self._manager = manager

    def GetModelStatus(  # noqa: N802
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """The state of each version of a model, or of the one asked for."""
        try:
            requests.require_model_spec(request)
            return self._manager.status(request.model_spec)
        except StatusError as error:
            _abort(context, error)


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """The server's TLS credentials in PEM; with `client_ca`, clients must present a
    certificate it signed (TF Serving's client_verify)."""

    private_key: bytes
    certificate_chain: bytes
    client_ca: bytes | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC's server credentials for these files."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def build_server(
    manager: ModelRegistry,
    address: str,
    *,
    threads: int,
    max_message_bytes: int,
    max_concurrent_requests: int | None = None,
    max_request_batch: int | None = None,
    tls: TlsFiles | None = None,
    metrics: Metrics | None = None,
    health: ModelHealth | None = None,
    options: Sequence[tuple[str, int | str]] = (),
) -> tuple[grpc.Server, int]:
    """A gRPC server for `manager` bound to `address`, not started, and its port.

    Past `max_concurrent_requests` calls in progress, gRPC answers RESOURCE_EXHAUSTED at
    once rather than queue them (each queued call holds its message in memory). `health`
    adds grpc.health.v1; `options` are gRPC server arguments (--grpc_channel_arguments),
    laid over the message limits. OSError when it cannot listen.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=max_concurrent_requests,
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # A port another server holds must fail here, not be silently shared.
            ("grpc.so_reuseport", 0),
            *options,
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, metrics, max_request_batch), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    if health is not None:
        health.add_to(server)
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.credentials())
    except RuntimeError as error:
        raise OSError(f"cannot listen on {address}: {error}") from None
    if port == 0:
        raise OSError(f"cannot listen on {address}: in use or not an address of this machine")
    return server, port
