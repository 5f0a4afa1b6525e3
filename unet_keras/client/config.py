"""Channel and retry settings shared by the blocking and the asyncio client."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import grpc

MIB = 1024 * 1024
_COMPRESSION = {
    None: grpc.Compression.NoCompression,
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
}


@dataclass(frozen=True)
class ChannelConfig:
    """How to reach the server: TLS, message limits, keepalive, compression, balancing.

    With `tls`, `root_certificates` (PEM) replaces the system's trusted roots and
    `private_key` with `certificate_chain` (PEM) authenticate the client (mutual TLS);
    `server_name` overrides the name the server's certificate must carry. gRPC's Python
    default caps received messages at 4 MiB; TF Serving accepts up to 2 GiB, so both
    limits default to 256 MiB, and larger images are tiled to fit them.
    """

    tls: bool = False
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name: str | None = None
    max_send_bytes: int = 256 * MIB
    max_receive_bytes: int = 256 * MIB
    # Off by default: gRPC servers (TF Serving included) answer pings more frequent than
    # every 5 minutes on an idle connection with GOAWAY "too_many_pings".
    keepalive_time: float | None = None
    keepalive_timeout: float = 20.0
    compression: str | None = None
    # round_robin spreads calls over every address the target resolves to: a headless
    # Kubernetes Service's pods, which one long-lived connection would otherwise pin.
    load_balancing: str = "round_robin"

    def __post_init__(self) -> None:
        if self.compression not in _COMPRESSION:
            raise ValueError(
                f"compression must be gzip, deflate or None, got {self.compression!r}"
            )
        for name in ("max_send_bytes", "max_receive_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("a client certificate needs both private_key and certificate_chain")
        if not self.tls and (self.root_certificates or self.private_key or self.server_name):
            raise ValueError("certificates and server_name need tls=True")

    def options(self) -> list[tuple[str, Any]]:
        """The gRPC channel arguments."""
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_send_bytes),
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            (
                "grpc.service_config",
                json.dumps({"loadBalancingConfig": [{self.load_balancing: {}}]}),
            ),
        ]
        if self.keepalive_time is not None:
            options += [
                ("grpc.keepalive_time_ms", int(self.keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout * 1000)),
            ]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )

    @property
    def grpc_compression(self) -> grpc.Compression:
        """The channel's default compression."""
        return _COMPRESSION[self.compression]


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures to retry, and how long to wait: exponential backoff, full jitter.

    Only UNAVAILABLE is retried (the server is unreachable, restarting, or shedding load:
    a request that never ran), and RESOURCE_EXHAUSTED with `retry_resource_exhausted`.
    `attempts` counts the first call. Retries stop early at the call's deadline.
    """

    attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    retry_resource_exhausted: bool = False

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise ValueError(
                "backoffs must satisfy 0 <= initial_backoff <= max_backoff, got "
                f"{self.initial_backoff} and {self.max_backoff}"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")

    def retries(self, code: grpc.StatusCode, attempt: int) -> bool:
        """Whether a call that failed with `code` on attempt `attempt` (1-based) goes again."""
        if attempt >= self.attempts:
            return False
        return code == grpc.StatusCode.UNAVAILABLE or (
            self.retry_resource_exhausted and code == grpc.StatusCode.RESOURCE_EXHAUSTED
        )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt`: uniform in [0, capped exponential]."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(0, cap)
