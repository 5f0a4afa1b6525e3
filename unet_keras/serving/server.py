"""`unet-keras serve`: a local gRPC model server that behaves like TensorFlow Serving.

For tests and local use where `tensorflow_model_server` is not at hand (it cannot be
pip-installed). It serves the SavedModel versions under a base path to the official
tensorflow-serving-api clients: PredictionService.Predict and GetModelMetadata,
ModelService.GetModelStatus, with TF Serving's codes and messages (see
`unet_keras.serving.grpc_services` for what matches and what does not).

Like TF Serving it loads the latest version before it opens its port, polls the base path
for new versions, loads a new one before it unloads the old one, and never serves one that
fails to load. On SIGTERM or SIGINT it stops taking requests, lets those in flight finish
(up to --grace-seconds) and exits 0.

Importing this module is cheap: TensorFlow and gRPC load when the server runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

# TF Serving's limit in both directions (ServerBuilder::SetMaxMessageSize(INT32_MAX)).
MAX_MESSAGE_BYTES = 2**31 - 1
_WAKE_SECONDS = 0.2

log = logging.getLogger(__name__)


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """The server's flags, named after tensorflow_model_server's where it has them."""
    parser.add_argument(
        "--model-base-path",
        required=True,
        type=Path,
        help="folder of numbered SavedModel versions (BASE/1/, BASE/2/, ...)",
    )
    parser.add_argument(
        "--model-name", default="unet", help="the name requests give in their model spec"
    )
    parser.add_argument("--port", type=int, default=8500, help="gRPC port")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface"
    )
    parser.add_argument(
        "--poll-seconds",
        type=_positive,
        default=1.0,
        help="interval between looks at the base path for new versions",
    )
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve over TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=MAX_MESSAGE_BYTES,
        help="largest request or response message",
    )
    parser.add_argument(
        "--threads", type=int, default=16, help="requests served at once (gRPC worker threads)"
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM or SIGINT, how long requests in flight may take to finish",
    )


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """Adds the `serve` subcommand to the `unet-keras` command."""
    serve = commands.add_parser(
        "serve",
        help="serve exported versions over gRPC like TensorFlow Serving (for tests and local use)",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_serve_flags(serve)
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serves until SIGTERM or SIGINT: 0 after a clean stop, 1 when it cannot start."""
    tls = _read_tls(args.tls_cert, args.tls_key)
    stop = threading.Event()
    previous = {
        number: signal.signal(number, lambda *_: stop.set())
        for number in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return _serve(args, tls, stop)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _serve(
    args: argparse.Namespace, tls: tuple[bytes, bytes] | None, stop: threading.Event
) -> int:
    """Loads the latest version, then listens and polls until `stop` is set."""
    from unet_keras.serving import grpc_services as model_server

    manager = model_server.ModelManager(args.model_name, args.model_base_path)
    try:
        if not manager.start(args.poll_seconds, stop):
            return 0  # stopped before any version loaded
        server, port = model_server.build_server(
            manager,
            _address(args.host, args.port),
            threads=args.threads,
            max_message_bytes=args.max_message_bytes,
            tls=tls,
        )
    except (model_server.ServingError, OSError) as error:
        log.error("Failed to start server. Error: %s", error)
        return 1
    server.start()
    log.info("Running gRPC ModelServer at %s ...", _address(args.host, port))
    threading.Thread(
        target=manager.poll_until, args=(args.poll_seconds, stop), daemon=True
    ).start()
    # A signal handler runs only once the main thread runs Python again, and a signal
    # that another thread took does not wake a wait without a timeout.
    while not stop.wait(_WAKE_SECONDS):
        pass
    log.info("Stopping: refusing new requests, finishing those in flight")
    server.stop(args.grace_seconds).wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m unet_keras.serving.server`: the same server as `unet-keras serve`."""
    parser = argparse.ArgumentParser(
        prog="python -m unet_keras.serving.server",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_serve_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return run(args)
    except (ValueError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_tls(cert: Path | None, key: Path | None) -> tuple[bytes, bytes] | None:
    """(private key, certificate chain) PEM bytes, or None to serve without TLS."""
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together: give both or neither")
    if cert is None:
        return None
    return key.read_bytes(), cert.read_bytes()


if __name__ == "__main__":
    sys.exit(main())
