"""The standard gRPC health service (grpc.health.v1.Health) over the served models.

Kubernetes gRPC probes and most load balancers ask it. Service "" (the server), TF
Serving's "ModelService" and "PredictionService" and their full names answer SERVING once
every configured model has an AVAILABLE version; each model's name answers for that model
alone. Every service answers NOT_SERVING once the server drains (tensorflow_model_server
registers only the first three and never turns them NOT_SERVING).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from unet_keras.server.models import ModelRegistry

SERVER_SERVICES = (
    "",
    "ModelService",
    "PredictionService",
    "tensorflow.serving.ModelService",
    "tensorflow.serving.PredictionService",
)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ModelHealth:
    """The health service of a registry's models; `update` after each change."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self._servicer = health.HealthServicer(experimental_non_blocking=True)
        self._models: set[str] = set()
        for service in SERVER_SERVICES:
            self._servicer.set(service, _NOT_SERVING)

    def add_to(self, server: grpc.Server) -> None:
        """Registers the service on a gRPC server (before it starts)."""
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    def update(self) -> None:
        """Sets each service from the models' versions now."""
        names = set(self._registry.names)
        every = True
        for name in names:
            manager = self._registry.manager(name)
            available = manager is not None and bool(manager.available())
            every = every and available
            self._servicer.set(name, _SERVING if available else _NOT_SERVING)
        for gone in self._models - names:  # a model the config no longer lists
            self._servicer.set(gone, _NOT_SERVING)
        self._models = names
        for service in SERVER_SERVICES:
            self._servicer.set(service, _SERVING if every else _NOT_SERVING)

    def drain(self) -> None:
        """Every service NOT_SERVING, for good: the server is stopping."""
        self._servicer.enter_graceful_shutdown()
