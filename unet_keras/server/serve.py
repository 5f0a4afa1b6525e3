"""`unet-keras serve`: a local model server that behaves like TensorFlow Serving.

For tests and local use where `tensorflow_model_server` is not at hand (it cannot be
pip-installed). It serves the SavedModel versions under a base path, or the models of a
model config file, to the official tensorflow-serving-api clients over gRPC and to any
HTTP client over TF Serving's REST API (see `unet_keras.server.grpc_services`,
`rest_api` and `models` for what matches TF Serving and what does not).

Like TF Serving it loads (and warms up) the models' versions on TF Serving's own loading
path before it opens its ports, polls the base paths for new versions, loads a new one
before it unloads the old one, tries a failed load again, never serves one that fails to
load, and re-reads the model config file every `model_config_file_poll_wait_seconds`. On
SIGTERM or SIGINT its health service turns NOT_SERVING, it stops taking requests and lets
those in flight finish for up to `grace_seconds`; then their graph runs are cancelled.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
import time
from pathlib import Path

import grpc
import tensorflow as tf

from unet_keras.server.config_files import read_monitoring_config, read_ssl_config
from unet_keras.server.grpc_services import TlsFiles, build_server
from unet_keras.server.health import ModelHealth
from unet_keras.server.http_server import RestServer
from unet_keras.server.models import ModelEntry, ModelRegistry, read_model_config
from unet_keras.server.prometheus import Metrics
from unet_keras.server.server_settings import ServeConfig
from unet_keras.server.status import StatusError
from unet_keras.server.versions import LoadOptions

# How long cancelled runs get to return before the process ends anyway.
_CANCEL_SECONDS = 2.0
# How often the main thread looks at `stop`: a signal handler runs only once the main
# thread runs Python again, and a signal another thread took does not wake a plain wait.
_WAKE_SECONDS = 0.2

log = logging.getLogger(__name__)


def serve(
    config: ServeConfig, stop: threading.Event | None = None, *, exit_when_stuck: bool = False
) -> int:
    """Serves until SIGTERM or SIGINT (or `stop`): 0 after a clean stop, 1 if it cannot start.

    From the main thread, SIGTERM and SIGINT set `stop`; their handlers are restored after,
    unless the process ends with the server (`exit_when_stuck`): then they are ignored from
    there on, as there is nothing left to stop, and a supervisor that repeats SIGTERM must
    not turn a clean stop into a kill (Python's exit puts a handler back to the default,
    which kills, but leaves an ignored signal ignored).
    Requests still running when `grace_seconds` have passed are cancelled (their sessions
    closed); with `exit_when_stuck`, a thread that still holds the process after that ends
    it at once (`os._exit`), so the grace period bounds a shutdown whatever is running.
    """
    tls = _read_tls(config)
    options = _grpc_options(config.grpc_channel_arguments)
    stop = stop or threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return _serve(config, tls, options, stop, exit_when_stuck)
    previous = {
        number: signal.signal(number, lambda *_: stop.set())
        for number in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return _serve(config, tls, options, stop, exit_when_stuck)
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_IGN if exit_when_stuck else handler)


def _serve(
    config: ServeConfig,
    tls: tuple[TlsFiles, ssl.SSLContext] | None,
    grpc_options: list[tuple[str, int | str]],
    stop: threading.Event,
    exit_when_stuck: bool,
) -> int:
    """Loads the models, then listens and polls until `stop` is set."""
    metrics = Metrics()
    registry = ModelRegistry(
        config.allow_version_labels_for_unavailable_models, metrics, _load_options(config, stop)
    )
    try:
        prometheus_path = (
            read_monitoring_config(config.monitoring_config_file)
            if config.monitoring_config_file
            else None
        )
        registry.apply(_models(config))
        if not registry.start(config.file_system_poll_wait_seconds or 1.0, stop):
            return 0  # stopped before every model loaded
        health = ModelHealth(registry) if config.enable_grpc_healthcheck_service else None
        server, port = build_server(
            registry,
            _address(config.host, config.port),
            threads=config.grpc_max_threads,
            max_message_bytes=config.max_message_bytes,
            max_concurrent_requests=config.max_concurrent_requests,
            max_request_batch=config.max_request_batch,
            tls=tls[0] if tls else None,
            metrics=metrics,
            health=health,
            options=grpc_options,
        )
        rest = None
        if config.rest_api_port:
            rest = RestServer(
                registry,
                config.host,
                config.rest_api_port,
                threads=config.rest_api_num_threads or config.grpc_max_threads,
                max_body_bytes=config.max_message_bytes,
                max_concurrent_requests=config.max_concurrent_requests,
                max_request_batch=config.max_request_batch,
                timeout_ms=config.rest_api_timeout_in_ms,
                body_timeout=config.rest_body_timeout_seconds,
                idle_timeout=config.rest_idle_timeout_seconds,
                cors=config.rest_api_enable_cors_support,
                metrics=metrics,
                prometheus_path=prometheus_path,
                ssl_context=tls[1] if tls else None,
            )
            rest.start()
    except (StatusError, OSError, ValueError) as error:
        message = error.message if isinstance(error, StatusError) else str(error)
        log.error("Failed to start server. Error: %s", message)
        return 1
    if health is not None:
        health.update()
    server.start()
    log.info("Running gRPC ModelServer at %s ...", _address(config.host, port))
    if rest is not None:
        log.info("Exporting HTTP/REST API at:%s ...", _address(config.host, rest.port))
    threading.Thread(
        target=_poll, args=(registry, config, health, stop), name="poll", daemon=True
    ).start()
    while not stop.wait(_WAKE_SECONDS):
        pass
    _drain(registry, health, server, rest, config.grace_seconds, exit_when_stuck)
    return 0


def _drain(
    registry: ModelRegistry,
    health: ModelHealth | None,
    server: grpc.Server,
    rest: RestServer | None,
    grace_seconds: float,
    exit_when_stuck: bool,
) -> None:
    """Stops taking requests, waits up to `grace_seconds` for those in flight, then cancels
    their runs; ends the process if a thread still holds it (`exit_when_stuck`)."""
    log.info("Stopping: refusing new requests, finishing those in flight")
    if health is not None:
        health.drain()
    deadline = time.monotonic() + grace_seconds
    stopped = server.stop(grace_seconds)
    if rest is not None:
        rest.stop(grace_seconds)
    stopped.wait(max(deadline - time.monotonic(), 0))
    if registry.requests_in_flight:
        log.warning(
            "%d request(s) still running after --grace-seconds; cancelling them",
            registry.requests_in_flight,
        )
        registry.cancel_runs()
        finished = time.monotonic() + _CANCEL_SECONDS
        while registry.requests_in_flight and time.monotonic() < finished:
            time.sleep(0.05)
    if registry.requests_in_flight and exit_when_stuck:
        log.warning("%d request(s) still running; exiting now", registry.requests_in_flight)
        logging.shutdown()
        os._exit(0)


def _models(config: ServeConfig) -> list[ModelEntry]:
    """The models to serve: the config file's, or the one of --model_base_path."""
    if config.model_config_file is not None:
        return read_model_config(config.model_config_file)
    return [ModelEntry(config.model_name, str(Path(config.model_base_path).absolute()))]


def _load_options(config: ServeConfig, stop: threading.Event) -> LoadOptions:
    """Load retries, warmup and session options, as tensorflow_model_server sets them."""
    session = tf.compat.v1.ConfigProto()
    intra, inter = config.tensorflow_intra_op_parallelism, config.tensorflow_inter_op_parallelism
    if not (intra or inter):  # server.cc: both from --tensorflow_session_parallelism
        intra = inter = config.tensorflow_session_parallelism
    session.intra_op_parallelism_threads, session.inter_op_parallelism_threads = intra, inter
    return LoadOptions(
        retries=config.max_num_load_retries,
        retry_interval=config.load_retry_interval_micros / 1e6,
        warmup=config.enable_model_warmup,
        session_config=session,
        stop=stop,
    )


def _grpc_options(arguments: str) -> list[tuple[str, int | str]]:
    """--grpc_channel_arguments KEY=VALUE,...: integers as integers, as main.cc passes them."""
    options: list[tuple[str, int | str]] = []
    for item in filter(None, arguments.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"--grpc_channel_arguments {arguments!r}: {item!r} is not KEY=VALUE")
        try:
            options.append((key, int(value)))
        except ValueError:
            options.append((key, value))
    return options


def _poll(
    registry: ModelRegistry,
    config: ServeConfig,
    health: ModelHealth | None,
    stop: threading.Event,
) -> None:
    """Looks at the base paths every file_system_poll_wait_seconds (0: never again) and
    re-reads the model config file every model_config_file_poll_wait_seconds, until `stop`
    is set; the health service follows."""
    reread = config.model_config_file_poll_wait_seconds
    next_read = time.monotonic() + reread
    interval = config.file_system_poll_wait_seconds
    while not stop.wait(interval or _WAKE_SECONDS * 5):
        if config.model_config_file is not None and reread and time.monotonic() >= next_read:
            next_read = time.monotonic() + reread
            try:
                if registry.apply(read_model_config(config.model_config_file)):
                    log.info("Applied the model config in %s", config.model_config_file)
            except StatusError as error:
                # As TF Serving's poller: log it, keep serving the config in force.
                log.error("Failed to reload the model config: %s", error.message)
        if interval:
            registry.poll()
        if health is not None and not stop.is_set():
            health.update()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_tls(config: ServeConfig) -> tuple[TlsFiles, ssl.SSLContext] | None:
    """The TLS files for gRPC, and the context for REST, checked as a TLS library reads
    them; None to serve without TLS.

    gRPC reports a bad certificate or key only as "failed to bind" (the cause goes to its C
    log), so they are loaded here first and their problem named.
    """
    if config.ssl_config_file is not None:
        ssl_config = read_ssl_config(config.ssl_config_file)
        key, cert = ssl_config.server_key.encode(), ssl_config.server_cert.encode()
        client_ca = ssl_config.custom_ca.encode() if ssl_config.client_verify else None
        where = f"--ssl_config_file {config.ssl_config_file}"
    elif config.tls_cert is not None and config.tls_key is not None:
        try:
            key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
            client_ca = None
            if config.tls_client_ca is not None:
                client_ca = Path(config.tls_client_ca).read_bytes()
        except OSError as error:
            raise ValueError(f"--tls-cert, --tls-key, --tls-client-ca: {error}") from None
        where = f"--tls-cert {config.tls_cert} and --tls-key {config.tls_key}"
    else:
        return None
    return TlsFiles(key, cert, client_ca), _ssl_context(key, cert, client_ca, where, config)


def _ssl_context(
    key: bytes, cert: bytes, client_ca: bytes | None, where: str, config: ServeConfig
) -> ssl.SSLContext:
    """The REST port's TLS context for PEM texts; ValueError names what is unusable."""
    import tempfile

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # ssl loads a key and chain only from files: a private temporary copy, gone at once.
    with tempfile.TemporaryDirectory() as folder:
        key_file, cert_file = Path(folder, "key.pem"), Path(folder, "cert.pem")
        key_file.write_bytes(key)
        cert_file.write_bytes(cert)
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as error:
            raise ValueError(
                f"{where}: not a usable certificate and private key ({error})"
            ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cadata=client_ca.decode())
        except (ssl.SSLError, ValueError, UnicodeDecodeError) as error:
            flag = "--tls-client-ca" if config.ssl_config_file is None else "custom_ca"
            raise ValueError(f"{flag} of {where}: not PEM CA certificates ({error})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
