"""`unet-keras serve`: a local model server that behaves like TensorFlow Serving.

For tests and local use where `tensorflow_model_server` is not at hand (it cannot be
pip-installed). It serves the SavedModel versions under a base path, or the models of a
model config file, to the official tensorflow-serving-api clients over gRPC and to any
HTTP client over TF Serving's REST API (see `unet_keras.serving.grpc_services`,
`rest_api` and `models` for what matches TF Serving and what does not).

Like TF Serving it loads (and warms up) the models' versions before it opens its ports,
polls the base paths for new versions, loads a new one before it unloads the old one,
never serves one that fails to load, and re-reads the model config file every
`model_config_file_poll_wait_seconds`. On SIGTERM or SIGINT it stops taking requests, lets
those in flight finish (up to `grace_seconds`) and returns 0.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
import time
from pathlib import Path

from unet_keras.config import ServeConfig
from unet_keras.serving.grpc_services import TlsFiles, build_server
from unet_keras.serving.http_server import RestServer
from unet_keras.serving.metrics import Metrics, read_monitoring_config
from unet_keras.serving.models import ModelEntry, ModelRegistry, read_model_config
from unet_keras.serving.status import StatusError

# How often the main thread looks at `stop`: a signal handler runs only once the main
# thread runs Python again, and a signal another thread took does not wake a plain wait.
_WAKE_SECONDS = 0.2

log = logging.getLogger(__name__)


def serve(
    config: ServeConfig, stop: threading.Event | None = None, *, exit_when_stuck: bool = False
) -> int:
    """Serves until SIGTERM or SIGINT (or `stop`): 0 after a clean stop, 1 if it cannot start.

    From the main thread, SIGTERM and SIGINT set `stop`; their handlers are restored after.
    A request still computing when `grace_seconds` have passed cannot be cancelled (a
    running TensorFlow function does not stop), and its thread would hold the process:
    with `exit_when_stuck`, the process then ends at once (`os._exit`), so the grace period
    bounds a shutdown.
    """
    tls = _read_tls(config)
    stop = stop or threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return _serve(config, tls, stop, exit_when_stuck)
    previous = {
        number: signal.signal(number, lambda *_: stop.set())
        for number in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return _serve(config, tls, stop, exit_when_stuck)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _serve(
    config: ServeConfig,
    tls: tuple[TlsFiles, ssl.SSLContext] | None,
    stop: threading.Event,
    exit_when_stuck: bool,
) -> int:
    """Loads the models, then listens and polls until `stop` is set."""
    metrics = Metrics()
    registry = ModelRegistry(config.allow_version_labels_for_unavailable_models, metrics)
    try:
        prometheus_path = (
            read_monitoring_config(config.monitoring_config_file)
            if config.monitoring_config_file
            else None
        )
        registry.apply(_models(config))
        if not registry.start(config.poll_seconds, stop):
            return 0  # stopped before every model loaded
        server, port = build_server(
            registry,
            _address(config.host, config.port),
            threads=config.threads,
            max_message_bytes=config.max_message_bytes,
            max_concurrent_requests=config.max_concurrent_requests,
            tls=tls[0] if tls else None,
            metrics=metrics,
        )
        rest = None
        if config.rest_api_port:
            rest = RestServer(
                registry,
                config.host,
                config.rest_api_port,
                threads=config.threads,
                max_body_bytes=config.max_message_bytes,
                max_concurrent_requests=config.max_concurrent_requests,
                metrics=metrics,
                prometheus_path=prometheus_path,
                ssl_context=tls[1] if tls else None,
            )
            rest.start()
    except (StatusError, OSError, ValueError) as error:
        message = error.message if isinstance(error, StatusError) else str(error)
        log.error("Failed to start server. Error: %s", message)
        return 1
    server.start()
    log.info("Running gRPC ModelServer at %s ...", _address(config.host, port))
    if rest is not None:
        log.info("Exporting HTTP/REST API at:%s ...", _address(config.host, rest.port))
    threading.Thread(target=_poll, args=(registry, config, stop), name="poll", daemon=True).start()
    while not stop.wait(_WAKE_SECONDS):
        pass
    log.info("Stopping: refusing new requests, finishing those in flight")
    if rest is not None:
        rest.stop(config.grace_seconds)
    server.stop(config.grace_seconds).wait()
    stuck = registry.requests_in_flight
    if stuck and exit_when_stuck:
        log.warning("%d request(s) still running after --grace-seconds; exiting now", stuck)
        logging.shutdown()
        os._exit(0)
    return 0


def _models(config: ServeConfig) -> list[ModelEntry]:
    """The models to serve: the config file's, or the one of --model-base-path."""
    if config.model_config_file is not None:
        return read_model_config(config.model_config_file)
    return [ModelEntry(config.model_name, str(Path(config.model_base_path).absolute()))]


def _poll(registry: ModelRegistry, config: ServeConfig, stop: threading.Event) -> None:
    """Looks at the base paths every poll_seconds and re-reads the model config file every
    model_config_file_poll_wait_seconds, until `stop` is set."""
    reread = config.model_config_file_poll_wait_seconds
    next_read = time.monotonic() + reread
    while not stop.wait(config.poll_seconds):
        if config.model_config_file is not None and reread and time.monotonic() >= next_read:
            next_read = time.monotonic() + reread
            try:
                if registry.apply(read_model_config(config.model_config_file)):
                    log.info("Applied the model config in %s", config.model_config_file)
            except StatusError as error:
                # As TF Serving's poller: log it, keep serving the config in force.
                log.error("Failed to reload the model config: %s", error.message)
        registry.poll()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_tls(config: ServeConfig) -> tuple[TlsFiles, ssl.SSLContext] | None:
    """The TLS files for gRPC, and the context for REST, checked as a TLS library reads
    them; None to serve without TLS.

    gRPC reports a bad certificate or key only as "failed to bind" (the cause goes to its C
    log), so they are loaded here first and their problem named.
    """
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (ssl.SSLError, OSError) as error:
        raise ValueError(
            f"--tls-cert {config.tls_cert} and --tls-key {config.tls_key}: not a usable "
            f"certificate and private key ({error})"
        ) from None
    client_ca = None
    if config.tls_client_ca is not None:
        try:
            context.load_verify_locations(config.tls_client_ca)
        except (ssl.SSLError, OSError) as error:
            raise ValueError(
                f"--tls-client-ca {config.tls_client_ca}: not PEM CA certificates ({error})"
            ) from None
        client_ca = Path(config.tls_client_ca).read_bytes()
        context.verify_mode = ssl.CERT_REQUIRED
    key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
    return TlsFiles(key, cert, client_ca), context
