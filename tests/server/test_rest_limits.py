"""The REST port holds what the gRPC port holds (issue 31): a request's memory and CPU
bounded by the bytes it carries, slow and idle clients holding no slot for long, work
cancelled when its client leaves or the REST timeout passes, every malformed body a 400
in TF Serving's error shape, CORS as TF Serving sends it, and a shutdown bounded by the
grace period.

One server process serves both test models for most tests, with small limits set by
flags; memory is its peak resident size (VmHWM, reset before each probe where Linux
allows), so a probe's figure is its own.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import resource
import select
import selectors
import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.serving_fixtures import (
    HALF_PLUS_TWO,
    UNET,
    ServerProcess,
    export_half_plus_two,
    registry_for,
    write_models,
)
from unet_keras.server.gzip_body import inflate_gzip
from unet_keras.server.http_server import RestServer

pytestmark = pytest.mark.slow

BODY_TIMEOUT = 1.0
IDLE_TIMEOUT = 3.0
REST_TIMEOUT_MS = 2000
CONCURRENT = 4
TIMEOUT = 30.0
MiB = 2**20
PREDICT = f"/v1/models/{HALF_PLUS_TWO}:predict"
FOREVER = 10**12  # `slowly` iterations: far longer than any test waits
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
TIMED_OUT = '{\n    "error": "Timed out waiting for notification"\n}'


@contextlib.contextmanager
def open_file_limit(soft: int) -> Iterator[None]:
    """This process's soft open-file limit set to `soft` (children inherit it)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = before[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Both models; one REST thread, 4 calls at once, a 1 s body timeout, a 3 s idle
    timeout, a 2 s REST timeout, CORS on; started under the common 1024-file limit."""
    folder = tmp_path_factory.mktemp("limits")
    write_models(folder, str(folder))
    flags = [
        "--allow-version-labels-for-unavailable-models",
        "--monitoring-config-file", str(folder / "monitoring.config"),
        "--rest-api-num-threads", "1",
        "--max-concurrent-requests", str(CONCURRENT),
        "--max-request-batch", "1000000",
        "--rest-body-timeout-seconds", str(BODY_TIMEOUT),
        "--rest-idle-timeout-seconds", str(IDLE_TIMEOUT),
        f"--rest_api_timeout_in_ms={REST_TIMEOUT_MS}",
        "--rest-api-enable-cors-support",
    ]  # fmt: skip
    with open_file_limit(1024):
        process = ServerProcess(folder / "models.config", UNET, folder / "server.log", *flags)
    try:
        process.wait_available()
        yield process
    finally:
        process.terminate()
        process.wait()
    # Every refusal is an answer, not an exception: a traceback would be a bug.
    assert "Traceback" not in process.log.read_text()


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    server: ServerProcess | str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> Reply:
    """One HTTP call on a connection of its own, to a server or a HOST:PORT."""
    address = server if isinstance(server, str) else server.rest_address
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, path, body, headers or {})
        answer = connection.getresponse()
        return Reply(answer.status, answer.headers, answer.read())
    finally:
        connection.close()


def predict(
    server: ServerProcess | str, document: Any, path: str = PREDICT, **options: Any
) -> Reply:
    return call(server, "POST", path, json.dumps(document).encode(), **options)


def predict_in_background(server: ServerProcess | str, document: Any) -> threading.Thread:
    """A call made on a thread of its own; its answer, or the error, is not kept."""

    def run() -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            predict(server, document)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def raw_predict(document: Any) -> bytes:
    """A predict call as raw HTTP/1.1 bytes, for a socket that leaves before its answer."""
    body = json.dumps(document).encode()
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def slowly(iterations: int) -> dict[str, Any]:
    """half_plus_two's `slowly` signature: about 4 µs an iteration here."""
    return {"signature_name": "slowly", "inputs": {"x": [1.0], "iterations": iterations}}


def memory_peak(process: ServerProcess) -> int:
    """The server's peak resident memory since its last reset, in bytes (VmHWM)."""
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


class PeakGrowth:
    """How far a block raises the server's peak memory: VmHWM is reset to the present
    resident size first (clear_refs 5), where Linux allows it."""

    def __init__(self, process: ServerProcess) -> None:
        self.process = process
        self.grown = 0

    def __enter__(self) -> PeakGrowth:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.process.process.pid}/clear_refs").write_text("5")
        self.before = memory_peak(self.process)
        return self

    def __exit__(self, *_: object) -> None:
        self.grown = memory_peak(self.process) - self.before

    def __str__(self) -> str:
        return f"{self.grown / MiB:.0f} MiB"


def counts(server: ServerProcess) -> dict[str, int]:
    """half_plus_two's request counts by status, from the metrics page."""
    page = call(server, "GET", "/monitoring/prometheus/metrics").body.decode()
    prefix = f':tensorflow:serving:request_count{{model_name="{HALF_PLUS_TWO}",status="'
    found = {}
    for line in page.splitlines():
        if line.startswith(prefix):
            labels, value = line.rsplit(" ", 1)
            found[labels[len(prefix) : -2]] = int(value)
    return found


def assert_tf_serving_error(reply: Reply, status: int, message: str) -> None:
    """TF Serving's error answer: the status, and `{"error": ...}` as JSON."""
    assert reply.status == status, (reply.status, reply.body[:500])
    assert reply.headers["Content-Type"].startswith("application/json")
    answer = reply.json()
    assert list(answer) == ["error"] and message in answer["error"], answer


# --- 1. gzip bodies: the inflated size is capped before and while inflating -------------


def gzip_of_zeros(size: int, stated: int | None = None) -> bytes:
    """`{"instances": [0,0,...,0]}` of about `size` bytes, gzip-compressed about 1000:1;
    the trailer states `stated` bytes if given (a lie), else the truth."""
    head, chunk, tail = b'{"instances": [', b"0," * (MiB // 2), b"0]}"
    repeats = max((size - len(head) - len(tail)) // len(chunk), 0)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    # After a full flush the compressor starts afresh: every chunk compresses alike.
    parts = [deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)]
    chunk_deflated = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    for _ in range(repeats):
        parts.append(chunk_deflated)
        crc = zlib.crc32(chunk, crc)
    parts.append(deflate.compress(tail) + deflate.flush())
    crc = zlib.crc32(tail, crc)
    total = len(head) + repeats * len(chunk) + len(tail)
    size_field = (total if stated is None else stated) & 0xFFFFFFFF
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + b"".join(parts) + struct.pack("<II", crc, size_field)


GZIP = {"Content-Encoding": "gzip", "Content-Type": "application/json"}


def test_a_gzip_bomb_is_refused_by_its_trailer_before_inflating(server: ServerProcess) -> None:
    bomb = gzip_of_zeros(2**30)
    assert len(bomb) < 1.2 * MiB
    with PeakGrowth(server) as growth:
        reply = call(server, "POST", PREDICT, bomb, GZIP)
    assert_tf_serving_error(reply, 400, "JSON Parse error: The document is empty")
    (stated,) = struct.unpack("<I", bomb[-4:])
    assert stated > 1e9
    assert f"inflates to {stated} bytes, more than this server's limit" in reply.json()["error"]
    # Before: aiohttp inflated it, the JSON took 15 GiB and no answer came in 5 minutes.
    assert growth.grown < 50 * MiB, growth


def test_a_gzip_trailer_that_lies_is_caught_while_inflating(server: ServerProcess) -> None:
    liar = gzip_of_zeros(2**30, stated=64 * MiB)
    with PeakGrowth(server) as growth:
        reply = call(server, "POST", PREDICT, liar, GZIP)
    assert_tf_serving_error(reply, 400, "inflates to more than the 67108864 bytes")
    # What it holds is what the trailer claimed, not the gigabyte.
    assert growth.grown < 150 * MiB, growth


HONEST_GZIP = zlib.compress(json.dumps({"instances": list(range(1000))}).encode(), wbits=31)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"instances": [1.0]}', "is not gzip data"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 20, "is corrupt (Error -3"),
        # Its first half, and the trailer's size field.
        (HONEST_GZIP[: len(HONEST_GZIP) // 2] + HONEST_GZIP[-4:], "is truncated"),
    ],
)
def test_a_gzip_body_that_cannot_be_inflated_is_a_400(
    server: ServerProcess, body: bytes, message: str
) -> None:
    reply = call(server, "POST", PREDICT, body, GZIP)
    assert_tf_serving_error(reply, 400, "JSON Parse error: The document is empty")
    assert f"(the gzip-encoded body {message}" in reply.json()["error"]


def test_an_honest_gzip_body_is_served(server: ServerProcess) -> None:
    body = zlib.compress(json.dumps({"instances": [1.0, 2.0]}).encode(), wbits=31)
    reply = call(server, "POST", PREDICT, body, GZIP)
    assert reply.status == 200 and reply.json() == {"predictions": [2.5, 3.0]}


def test_inflating_never_holds_more_than_the_limit() -> None:
    small = gzip_of_zeros(3 * MiB)
    assert len(inflate_gzip(small, 4 * MiB)) == struct.unpack("<I", small[-4:])[0]
    # A trailer claiming 1 MiB over a body of 3: stopped one step past the claim.
    with pytest.raises(ValueError, match="more than the 1048576 bytes its trailer states"):
        inflate_gzip(small[:-4] + struct.pack("<I", MiB), 4 * MiB)
    with pytest.raises(ValueError, match="more than this server's limit of 2097152"):
        inflate_gzip(small, 2 * MiB)


# --- 2. instances: one array for all of them, not one per value --------------------------


def test_a_flat_list_of_scalars_is_parsed_in_one_array(server: ServerProcess) -> None:
    """500,000 instances (the server allows that many): 1 MB of JSON."""
    values = [index % 10 for index in range(500_000)]
    body = json.dumps({"instances": values}, separators=(",", ":")).encode()
    assert len(body) < 1.1 * MiB
    with PeakGrowth(server) as growth:
        reply = call(server, "POST", PREDICT, body)
    assert reply.status == 200, reply.body[:300]
    predictions = reply.json()["predictions"]
    assert len(predictions) == 500_000 and predictions[:3] == [2.0, 2.5, 3.0]
    assert growth.grown < 150 * MiB, growth  # 220 MiB and 3.4 s with one array per value


def test_the_item_at_fault_is_still_named(server: ServerProcess) -> None:
    values: list[Any] = [1.0] * 100_000
    values[77_777] = "x"
    reply = predict(server, {"instances": values})
    assert_tf_serving_error(reply, 400, "Failed to process element: 77777 of 'instances' list")
    reply = predict(server, {"instances": [[1.0], [1.0, 2.0]]})
    assert_tf_serving_error(reply, 400, "element: 1 of 'instances' list. Error: INVALID_ARGUMENT")


# --- 3. slow and idle clients hold no slot for long ---------------------------------------


def dribbler(server: ServerProcess) -> socket.socket:
    """A connection sending a predict's headers and one byte of its 100-byte body."""
    host, port = server.rest_address.split(":")
    connection = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    connection.sendall(
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n{".encode()
    )
    return connection


def answered(connection: socket.socket) -> bool:
    """Whether anything (an answer, or the end) has come on `connection` yet."""
    poll = select.poll()
    poll.register(connection, select.POLLIN)
    return bool(poll.poll(0))


def answer_on(connection: socket.socket) -> Reply:
    """The HTTP answer that comes on `connection`."""
    answer = http.client.HTTPResponse(connection)
    answer.begin()
    return Reply(answer.status, answer.headers, answer.read())


def test_slow_bodies_hold_no_slot_and_time_out(server: ServerProcess) -> None:
    dribblers = [dribbler(server) for _ in range(40)]
    try:
        # More slow senders than slots: a call whose body came whole is still served.
        honest = predict(server, {"instances": [1.0]})
        assert honest.status == 200, honest.body
        waiting = [connection for connection in dribblers if not answered(connection)]
        assert len(waiting) >= CONCURRENT - 1, "the slow senders were let go before the call"
        # The slow ones go on sending a byte now and then: the limit is on the whole body.
        started = time.monotonic()
        for _ in range(3):
            time.sleep(BODY_TIMEOUT / 3)
            for connection in waiting:
                with contextlib.suppress(OSError):
                    connection.send(b" ")
        answers = [answer_on(connection) for connection in dribblers]
        waited = time.monotonic() - started
    finally:
        for connection in dribblers:
            connection.close()
    statuses = [answer.status for answer in answers]
    assert set(statuses) <= {408, 429}, statuses
    assert statuses.count(408) >= CONCURRENT - 1, statuses
    for answer in answers:
        expected = "The request body did not arrive within 1 s" if answer.status == 408 else ""
        assert_tf_serving_error(answer, answer.status, expected)
        assert cors_of(answer) == CORS
    assert waited < BODY_TIMEOUT + 15


def test_idle_connections_are_closed_and_do_not_stall_the_port(server: ServerProcess) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard open-file limit, {hard}, leaves no room for 1100 connections")
    host, port = server.rest_address.split(":")
    with open_file_limit(4096), selectors.DefaultSelector() as watch:
        idle = []
        try:
            # More than the server's starting limit of 1024 files, in batches that its
            # accept queue (128) holds.
            for _ in range(11):
                for _ in range(100):
                    connection = socket.socket()
                    connection.setblocking(False)
                    connection.connect_ex((host, int(port)))
                    idle.append(connection)
                    watch.register(connection, selectors.EVENT_READ)
                time.sleep(0.05)
            reply = call(server, "GET", f"/v1/models/{HALF_PLUS_TWO}", timeout=10)
            closed = {key.fileobj for key, _ in watch.select(timeout=0)}
            assert reply.status == 200
            assert len(closed) < 10, "the idle connections were closed before the call"
            # Then the server closes them, once idle for --rest-idle-timeout-seconds.
            deadline = time.monotonic() + IDLE_TIMEOUT + 15
            while len(closed) < len(idle) and time.monotonic() < deadline:
                for key, _ in watch.select(timeout=1):
                    if not _has_data(key.fileobj):
                        closed.add(key.fileobj)
                        watch.unregister(key.fileobj)
            assert len(closed) == len(idle), f"{len(idle) - len(closed)} left open"
        finally:
            for connection in idle:
                connection.close()


def _has_data(connection: socket.socket) -> bool:
    """False once the peer has closed (or reset) the connection."""
    try:
        return bool(connection.recv(1))
    except BlockingIOError:
        return True
    except OSError:
        return False


# --- 4. a request's work: bounded in size, in time, and by its client being there ---------


def test_more_instances_than_the_batch_limit_are_refused_before_decoding(
    server: ServerProcess,
) -> None:
    """Counted where a signature takes images: the U-Net's, 1x1 images here."""
    images: list[Any] = [[[[0]]]] * 1_000_001
    images[-1] = "not an image"  # decoding would report this; the count is checked first
    path = f"/v1/models/{UNET}:predict"
    reply = predict(server, {"instances": images}, path=path)
    assert_tf_serving_error(reply, 400, "1000001 images along the first dimension")
    assert "--max-request-batch" in reply.json()["error"]
    reply = predict(server, {"inputs": images}, path=path)
    assert_tf_serving_error(reply, 400, "1000001 images along the first dimension")


def test_a_run_past_the_rest_timeout_is_answered_504_as_tf_serving_does(
    server: ServerProcess,
) -> None:
    started = time.monotonic()
    reply = predict(server, slowly(FOREVER), timeout=REST_TIMEOUT_MS / 1000 + 20)
    waited = time.monotonic() - started
    assert reply.status == 504 and reply.body.decode() == TIMED_OUT
    assert reply.headers["Content-Type"].startswith("application/json")
    assert {name: reply.headers[name] for name in CORS} == CORS
    assert waited >= REST_TIMEOUT_MS / 1000 - 0.1


def test_work_is_not_started_for_a_client_that_left(server: ServerProcess) -> None:
    before = counts(server)
    # The server's one REST thread is busy with this call for up to the REST timeout.
    first = predict_in_background(server, slowly(FOREVER))
    time.sleep(0.5)
    # A second call queues behind it, and its client leaves.
    host, port = server.rest_address.split(":")
    with socket.create_connection((host, int(port))) as leaving:
        leaving.sendall(raw_predict(slowly(FOREVER)))
        time.sleep(0.2)
    first.join(REST_TIMEOUT_MS / 1000 + 20)
    assert not first.is_alive(), "the first call was not cut at the REST timeout"
    # The thread takes the queue in order: had the second call run, it would end first.
    assert predict(server, {"instances": [1.0]}).status == 200
    after = counts(server)
    grown = {status: after.get(status, 0) - before.get(status, 0) for status in after}
    assert grown.get("CANCELLED") == 1, grown
    assert grown.get("DEADLINE_EXCEEDED") == 1 and grown.get("OK") == 1, grown


# --- 5. a malformed body is a 400 in TF Serving's shape, never a 500 ---------------------


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


MALFORMED = {
    "65 levels of nesting, in instances": (
        PREDICT,
        f'{{"instances": [{nested(64)}]}}',
        "at most 64 dimensions",
    ),
    "70 levels of nesting, in inputs": (
        PREDICT,
        f'{{"inputs": {nested(70)}}}',
        "at most 64 dimensions",
    ),
    "900 levels of nesting": (PREDICT, f'{{"instances": [{nested(900)}]}}', "at most 64"),
    "a lone surrogate escape in a string input": (
        f"/v1/models/{UNET}:predict",
        '{"signature_name": "segment_png", "instances": ["\\ud800"]}',
        "The surrogate pair in string is invalid. at offset: 49",  # its backslash
    ),
    "a lone surrogate escape as signature name": (
        PREDICT,
        '{"signature_name": "\\udc00", "instances": [1]}',
        "surrogate pair",
    ),
    "an encoded surrogate": (
        PREDICT,
        b'{"signature_name": "\xed\xa0\x80", "instances": [1]}',
        "Invalid encoding",
    ),
    "a 400-digit integer for float32 tiles": (
        f"/v1/models/{UNET}:predict",
        '{"signature_name": "tiles", "instances": [[[[1' + "0" * 400 + "]]]]}",
        "Number too big to be stored in double.",
    ),
    # Not a crash before, but rapidjson reads UTF-8 only: TF Serving refuses it too.
    "a body in UTF-16": (PREDICT, '{"instances": [1]}'.encode("utf-16"), "Invalid encoding"),
}


@pytest.mark.parametrize("probe", MALFORMED)
def test_a_malformed_body_is_a_400_in_tf_servings_shape(server: ServerProcess, probe: str) -> None:
    path, body, message = MALFORMED[probe]
    reply = call(server, "POST", path, body if isinstance(body, bytes) else body.encode())
    assert_tf_serving_error(reply, 400, message)


def test_a_gzip_header_on_a_body_that_is_not_gzip_is_a_400(server: ServerProcess) -> None:
    reply = call(server, "POST", PREDICT, b'{"instances": [1]}', {"Content-Encoding": "gzip"})
    assert_tf_serving_error(reply, 400, "The document is empty (the gzip-encoded body is not")


# --- 6. CORS, as TF Serving sends it ------------------------------------------------------


def cors_of(reply: Reply) -> dict[str, str]:
    return {name: value for name, value in reply.headers.items() if name.startswith("Access-")}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", f"/v1/models/{HALF_PLUS_TWO}", None, 200),
        ("GET", "/v1/models/nope", None, 404),
        ("POST", PREDICT, b"{not json", 400),
        ("POST", PREDICT, b'{"instances": [1.0]}', 200),
        ("DELETE", PREDICT, None, 400),
    ],
)
def test_cors_headers_on_every_api_answer(
    server: ServerProcess, method: str, path: str, body: bytes | None, status: int
) -> None:
    reply = call(server, method, path, body)
    assert reply.status == status
    assert cors_of(reply) == CORS


def test_no_cors_headers_outside_the_api(server: ServerProcess) -> None:
    assert cors_of(call(server, "GET", "/monitoring/prometheus/metrics")) == {}
    missing = call(server, "GET", "/v2/models")
    assert missing.status == 404 and cors_of(missing) == {}


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("http://example.com", 200),
        ("https://example.com:8443", 200),
        ("null, https://example.com", 200),  # RE2::PartialMatch: anywhere in the header
        ("example.com", 400),
        (None, 400),
    ],
)
def test_a_preflight_is_answered_as_tf_serving_does(
    server: ServerProcess, origin: str | None, status: int
) -> None:
    headers = {"Access-Control-Request-Method": "POST"}
    if origin is not None:
        headers["Origin"] = origin
    reply = call(server, "OPTIONS", PREDICT, headers=headers)
    assert reply.status == status and reply.body == b""
    assert cors_of(reply) == CORS


# --- 7. shutdown: bounded by the grace period, whatever runs ------------------------------


@pytest.fixture(scope="module")
def half_plus_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("stop") / HALF_PLUS_TWO
    export_half_plus_two(base, 1)
    return base


def test_stop_returns_within_the_grace_period_while_a_run_goes_on(half_plus_two: Path) -> None:
    registry = registry_for(HALF_PLUS_TWO, half_plus_two)
    assert registry.start(0.1, threading.Event())
    rest = RestServer(
        registry, "127.0.0.1", 0, threads=1, max_body_bytes=MiB, max_concurrent_requests=2
    )
    rest.start()
    caller = predict_in_background(f"127.0.0.1:{rest.port}", slowly(FOREVER))
    try:
        deadline = time.monotonic() + 10
        while not registry.requests_in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert registry.requests_in_flight == 1
        started = time.monotonic()
        rest.stop(0.5)  # must neither raise nor wait for the run
        stopped = time.monotonic() - started
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", rest.port), timeout=1).close()
    finally:
        registry.cancel_runs()
        caller.join(10)
    assert not caller.is_alive()
    assert stopped < 0.5 + 5, f"{stopped:.1f} s"


def test_a_client_leaving_mid_run_holds_its_slot_until_the_run_ends(half_plus_two: Path) -> None:
    registry = registry_for(HALF_PLUS_TWO, half_plus_two)
    assert registry.start(0.1, threading.Event())
    rest = RestServer(
        registry, "127.0.0.1", 0, threads=2, max_body_bytes=MiB, max_concurrent_requests=1,
        timeout_ms=2000,
    )  # fmt: skip
    rest.start()
    address = f"127.0.0.1:{rest.port}"
    try:
        with socket.create_connection(("127.0.0.1", rest.port)) as leaving:
            leaving.sendall(raw_predict(slowly(FOREVER)))
            deadline = time.monotonic() + 10
            while not registry.requests_in_flight and time.monotonic() < deadline:
                time.sleep(0.02)
        # Its client gone, the run goes on to the REST timeout, and keeps its slot...
        assert registry.requests_in_flight == 1
        assert predict(address, {"instances": [1.0]}).status == 429
        # ...which is free once the run has ended.
        deadline = time.monotonic() + 20
        while predict(address, {"instances": [1.0]}).status != 200:
            assert time.monotonic() < deadline, "the slot was never freed"
            time.sleep(0.1)
        assert not registry.requests_in_flight
    finally:
        rest.stop(1.0)


def test_sigterm_during_a_long_rest_call_ends_the_process_within_the_grace_period(
    half_plus_two: Path, tmp_path: Path
) -> None:
    flags = ["--grace-seconds", "1", "--rest_api_timeout_in_ms=0"]
    process = ServerProcess(half_plus_two, HALF_PLUS_TWO, tmp_path / "server.log", *flags)
    try:
        process.wait_available()
        predict_in_background(process, slowly(FOREVER))
        time.sleep(1.0)  # the call is running
        started = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        status = process.process.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()
    assert status == 0, process.log.read_text()[-2000:]
    # The grace period, then 2 s for cancelled runs to end, and the process is gone.
    assert took < 1 + 2 + 5, f"{took:.1f} s"


def test_base64_instances_still_decode(server: ServerProcess) -> None:
    """String inputs take the one-array path too (PNGs for the U-Net)."""
    image = np.zeros((16, 16), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    body = {
        "signature_name": "segment_png",
        "instances": [{"b64": base64.b64encode(buffer.getvalue()).decode()}] * 2,
    }
    reply = predict(server, body, f"/v1/models/{UNET}:predict")
    assert reply.status == 200 and len(reply.json()["predictions"]) == 2
