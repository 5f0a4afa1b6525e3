"""The server's text-proto config files that tensorflow-serving-api ships no module for:
`--monitoring_config_file` (MonitoringConfig, config/monitoring_config.proto) and
`--ssl_config_file` (SSLConfig, config/ssl_config.proto), their messages declared here as
those .proto files declare them."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from unet_keras.server.prometheus import PROMETHEUS_PATH

_BOOL, _STRING, _MESSAGE = 8, 9, 11  # FieldDescriptorProto types
_PACKAGE = "tensorflow.serving"


@functools.cache
def _messages() -> descriptor_pool.DescriptorPool:
    """A pool with the messages of both files."""
    file = descriptor_pb2.FileDescriptorProto(
        name="unet_keras/server_config_files.proto", package=_PACKAGE, syntax="proto3"
    )
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=_BOOL, label=1)
    prometheus.field.add(name="path", number=2, type=_STRING, label=1)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config", number=1, type=_MESSAGE, label=1,
        type_name=f".{_PACKAGE}.PrometheusConfig",
    )  # fmt: skip
    ssl = file.message_type.add(name="SSLConfig")
    for number, name in enumerate(("server_key", "server_cert", "custom_ca"), start=1):
        ssl.field.add(name=name, number=number, type=_STRING, label=1)
    ssl.field.add(name="client_verify", number=4, type=_BOOL, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool


def _read(path: str, flag: str, message: str) -> Any:
    """The text proto `message` in `path`; ValueError names the flag, file and problem."""
    config = message_factory.GetMessageClass(
        _messages().FindMessageTypeByName(f"{_PACKAGE}.{message}")
    )()
    try:
        with open(path) as handle:
            text_format.Parse(handle.read(), config)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as error:
        raise ValueError(f"{flag} {path}: not a readable text {message} ({error})") from None
    return config


def read_monitoring_config(path: str) -> str | None:
    """The Prometheus path a `--monitoring_config_file` enables, or None when it does not."""
    config = _read(path, "--monitoring_config_file", "MonitoringConfig")
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or PROMETHEUS_PATH


@dataclasses.dataclass(frozen=True)
class SslConfig:
    """An SSLConfig: PEM texts, and whether clients must present a certificate `custom_ca`
    signed (client_verify)."""

    server_key: str
    server_cert: str
    custom_ca: str
    client_verify: bool


def read_ssl_config(path: str) -> SslConfig:
    """The `--ssl_config_file`'s PEM texts, checked to hold a key and a certificate."""
    config = _read(path, "--ssl_config_file", "SSLConfig")
    if not config.server_key or not config.server_cert:
        raise ValueError(f"--ssl_config_file {path}: needs server_key and server_cert (PEM text)")
    if config.client_verify and not config.custom_ca:
        raise ValueError(
            f"--ssl_config_file {path}: client_verify needs custom_ca, the PEM CA certificates "
            "that clients' certificates are checked against"
        )
    return SslConfig(config.server_key, config.server_cert, config.custom_ca, config.client_verify)
