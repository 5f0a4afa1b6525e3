"""The client's REST transport: the same results as gRPC from one server, typed errors,
labels, and no crash or hang whatever a hostile REST server answers."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.client.conftest import BlockingFacade
from unet_keras.client import (
    ChannelConfig,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    SegmentationClient,
    ServingError,
)
from unet_keras.client.command import main as client_main

NO_RETRY = RetryPolicy(attempts=1)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The tiny U-Net export served in this process: (gRPC address, REST address)."""
    from tests.serving_fixtures import UNET, export_unet, registry_for
    from unet_keras.server.grpc_services import build_server
    from unet_keras.server.http_server import RestServer
    from unet_keras.server.models import ModelEntry

    folder = tmp_path_factory.mktemp("rest_client")
    export_unet(folder)
    registry = registry_for(UNET, folder / UNET)
    assert registry.start(0.1, threading.Event())
    registry.apply([ModelEntry(UNET, str((folder / UNET).absolute()), labels=(("stable", 1),))])
    grpc_server, port = build_server(registry, "127.0.0.1:0", threads=4, max_message_bytes=1 << 30)
    grpc_server.start()
    rest = RestServer(
        registry, "127.0.0.1", 0, threads=4, max_body_bytes=1 << 30, max_concurrent_requests=8
    )
    rest.start()
    yield f"127.0.0.1:{port}", f"127.0.0.1:{rest.port}"
    rest.stop(1.0)
    grpc_server.stop(None)


@pytest.fixture(params=["sync", "asyncio"])
def rest_client(request: pytest.FixtureRequest, servers: tuple[str, str]) -> Iterator[object]:
    """A REST client of each kind on the REST port."""
    kind = SegmentationClient if request.param == "sync" else BlockingFacade
    with kind(servers[1], "unet", transport="rest", retry=NO_RETRY) as client:
        yield client


def test_rest_gives_what_grpc_gives(servers: tuple[str, str], rest_client: object) -> None:
    image = np.random.default_rng(5).integers(0, 256, (130, 97), dtype=np.uint8)
    with SegmentationClient(servers[0], "unet") as grpc_client:
        expected = grpc_client.segment(image, probabilities=True)
        assert rest_client.model_status() == grpc_client.model_status()
        assert rest_client.metadata() == grpc_client.metadata()
        assert rest_client.model_record() == grpc_client.model_record()
    result = rest_client.segment(image, probabilities=True, version="stable")
    np.testing.assert_array_equal(result.mask, expected.mask)
    np.testing.assert_array_equal(result.probabilities, expected.probabilities)
    assert result.mask.dtype == expected.mask.dtype
    assert rest_client.segment(image).probabilities is None


def test_rest_errors_are_the_typed_errors_of_grpc(rest_client: object) -> None:
    image = np.zeros((40, 40), np.uint8)
    with pytest.raises(NotFoundError, match=r"Specific\(unet, 9\)"):
        rest_client.segment(image, version=9)
    with pytest.raises(InvalidArgumentError, match="Unrecognized servable version label: x"):
        rest_client.segment(image, version="x")
    with pytest.raises(InvalidArgumentError, match="is not of expected type: uint8"):
        rest_client.predict({"image": np.zeros((1, 8, 8, 1), np.float32)})


def test_unet_client_over_rest_with_a_label(servers: tuple[str, str], tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((50, 60), 128, np.uint8)).save(tmp_path / "a.png")
    flags = ["--server", servers[1], "--rest", "--label", "stable", "-o", str(tmp_path / "out")]
    assert client_main(["segment", str(tmp_path / "a.png"), *flags]) == 0
    assert np.asarray(Image.open(tmp_path / "out" / "a.png")).shape == (50, 60)


class Hostile(http.server.BaseHTTPRequestHandler):
    """Answers every call as `answer` says: (status, headers, body)."""

    answer: Callable[[str], tuple[int, dict[str, str], bytes]]

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status, headers, body = type(self).answer(self.path)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


def hostile(answer: Callable[[str], tuple[int, dict[str, str], bytes]]) -> Iterator[str]:
    handler = type("Handler", (Hostile,), {"answer": staticmethod(answer)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _json(status: int, value: object) -> tuple[int, dict[str, str], bytes]:
    body = value if isinstance(value, bytes) else json.dumps(value).encode()
    return status, {"Content-Length": str(len(body))}, body


SIGNATURES = {
    "metadata": {
        "signature_def": {
            "signature_def": {
                "serving_default": {
                    "outputs": {
                        "mask": {"dtype": "DT_UINT8"},
                        "probabilities": {"dtype": "DT_FLOAT"},
                    }
                },
                "segment_png": {"outputs": {"mask_png_bytes": {"dtype": "DT_STRING"}}},
            }
        }
    },
    "model_spec": {"name": "unet", "version": "1"},
}


@pytest.mark.parametrize(
    ("predict_answer", "error"),
    [
        (_json(200, b"not json"), "not JSON"),
        (_json(200, b"[" * 40_000 + b"]" * 40_000), "not JSON"),
        (_json(200, {"outputs": {"probabilities": [1]}}), "no output 'mask'"),
        (_json(200, {"outputs": {"mask": [[[300]]], "probabilities": [1]}}), "out of the range"),
        (_json(200, {"outputs": {"mask": [[[1], [2, 3]]], "probabilities": 1}}), "unexpected"),
        (_json(200, {"predictions": []}), "no 'outputs'"),
        (_json(500, b"<html>oops</html>"), "HTTP 500"),
        ((200, {"Content-Length": str(1 << 40)}, b"{}"), "above max_receive_bytes"),
        ((200, {}, b"{" + b" " * 200_000), "larger than max_receive_bytes"),
    ],
)
def test_a_hostile_rest_server_gives_a_clear_error(
    predict_answer: tuple[int, dict[str, str], bytes], error: str
) -> None:
    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        return _json(200, SIGNATURES) if path.endswith("/metadata") else predict_answer

    for address in hostile(answer):
        channel = ChannelConfig(max_receive_bytes=100_000)
        with (
            SegmentationClient(
                address, "unet", transport="rest", channel=channel, retry=NO_RETRY, timeout=5
            ) as client,
            pytest.raises(ServingError, match=error) as raised,
        ):
            # float32: no PNG, so serving_default's JSON pixels (uint8 goes as PNG, below).
            client.segment(np.zeros((4, 4), np.float32))
    # A limit passed is RESOURCE_EXHAUSTED; anything unreadable INTERNAL (never retried).
    limited = "max_receive" in error
    assert isinstance(raised.value, ResourceExhaustedError) == limited
    assert limited or raised.value.code.name in ("INTERNAL", "UNKNOWN")


@pytest.mark.parametrize(
    ("outputs", "error"),
    [
        ([{"b64": "bm90IGEgcG5n"}], "PNG mask is unreadable"),
        ({"b64": "bm90IGEgcG5n"}, "single PNG mask"),  # no batch dimension
        (["a", "b"], "single PNG mask"),
    ],
)
def test_a_hostile_png_answer_is_refused_not_decoded_blindly(outputs: object, error: str) -> None:
    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        return _json(200, SIGNATURES if path.endswith("/metadata") else {"outputs": outputs})

    for address in hostile(answer):
        with (
            SegmentationClient(address, "unet", transport="rest", retry=NO_RETRY) as client,
            pytest.raises(ValueError, match=error),
        ):
            client.segment(np.zeros((4, 4), np.uint8))
