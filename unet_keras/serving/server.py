"""`unet-keras serve`: a local model server that behaves like TensorFlow Serving.

For tests and local use where `tensorflow_model_server` is not at hand (it cannot be
pip-installed). It serves the SavedModel versions under a base path to the official
tensorflow-serving-api clients (see `unet_keras.serving.grpc_services` for what matches
TF Serving and what does not).

Like TF Serving it loads the latest version before it opens its port, polls the base path
for new versions, loads a new one before it unloads the old one, and never serves one that
fails to load. On SIGTERM or SIGINT it stops taking requests, lets those in flight finish
(up to `grace_seconds`) and returns 0.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
from pathlib import Path

from unet_keras.config import ServeConfig
from unet_keras.serving.grpc_services import TlsFiles, build_server
from unet_keras.serving.status import StatusError
from unet_keras.serving.versions import ModelManager

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
    config: ServeConfig, tls: TlsFiles | None, stop: threading.Event, exit_when_stuck: bool
) -> int:
    """Loads the latest version, then listens and polls until `stop` is set."""
    manager = ModelManager(config.model_name, config.model_base_path)
    try:
        if not manager.start(config.poll_seconds, stop):
            return 0  # stopped before any version loaded
        server, port = build_server(
            manager,
            _address(config.host, config.port),
            threads=config.threads,
            max_message_bytes=config.max_message_bytes,
            max_concurrent_requests=config.max_concurrent_requests,
            tls=tls,
        )
    except (StatusError, OSError) as error:
        log.error("Failed to start server. Error: %s", error)
        return 1
    server.start()
    log.info("Running gRPC ModelServer at %s ...", _address(config.host, port))
    threading.Thread(
        target=manager.poll_until, args=(config.poll_seconds, stop), daemon=True
    ).start()
    while not stop.wait(_WAKE_SECONDS):
        pass
    log.info("Stopping: refusing new requests, finishing those in flight")
    server.stop(config.grace_seconds).wait()
    stuck = manager.requests_in_flight
    if stuck and exit_when_stuck:
        log.warning("%d request(s) still running after --grace-seconds; exiting now", stuck)
        logging.shutdown()
        os._exit(0)
    return 0


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_tls(config: ServeConfig) -> TlsFiles | None:
    """The TLS files, checked as a TLS library reads them; None to serve without TLS.

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
    key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
    return TlsFiles(key, cert, client_ca)
