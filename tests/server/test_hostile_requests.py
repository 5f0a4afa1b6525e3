"""A request's cost is bounded by what it carries: small requests that claim huge tensors,
PNG headers that claim huge images, floods of requests, and inputs no request can hold
are all refused before any work, and the server keeps its memory."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.serving_fixtures import (
    HALF_PLUS_TWO,
    ServerProcess,
    export_half_plus_two,
    floats,
    predict_request,
    tensor,
    unet_request,
)

pytestmark = pytest.mark.slow
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
RPC_TIMEOUT = 60.0


def memory_peak(process: ServerProcess) -> int:
    """The server's peak resident memory so far, in bytes (VmHWM)."""
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def png_claiming(width: int, height: int) -> bytes:
    """A PNG signature and an IHDR chunk claiming `width` x `height`, and no image data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


HOSTILE = {
    "image 4096^2 with one value": unet_request(
        "serving_default", image=tensor(types_pb2.DT_UINT8, [1, 4096, 4096, 1], int_val=[7])
    ),
    "image claiming 2^31 x 2^31": unet_request(
        "serving_default",
        image=tensor(types_pb2.DT_UINT8, [1, 2**31 - 1, 2**31 - 1, 1], int_val=[7]),
    ),
    "20000000 PNGs, none sent": unet_request(
        "segment_png", image_png=tensor(types_pb2.DT_STRING, [20_000_000])
    ),
    "a PNG header of 0xFFFFFFFF^2": unet_request(
        "segment_png",
        image_png=tensor(
            types_pb2.DT_STRING, [1], string_val=[png_claiming(2**32 - 1, 2**32 - 1)]
        ),
    ),
    "a PNG header of 60000^2": unet_request(
        "segment_png",
        image_png=tensor(types_pb2.DT_STRING, [1], string_val=[png_claiming(60000, 60000)]),
    ),
    "tiles 2048^2 with one value": unet_request(
        "tiles", tiles=tensor(types_pb2.DT_FLOAT, [1, 2048, 2048, 1], float_val=[0.5])
    ),
    "16 tiles of 1024^2 with one value": unet_request(
        "tiles", tiles=tensor(types_pb2.DT_FLOAT, [16, 1024, 1024, 1], float_val=[0.5])
    ),
    "a resource input": unet_request("tiles", tiles=tensor(types_pb2.DT_RESOURCE, [1])),
    "a variant input": unet_request("tiles", tiles=tensor(types_pb2.DT_VARIANT, [1])),
    "an input to the metadata signature": unet_request(
        "metadata", x=tensor(types_pb2.DT_UINT8, [10**9], int_val=[1])
    ),
}


def test_small_requests_claiming_much_are_refused_and_cost_nothing(tiny_server: ServerProcess):
    with grpc.insecure_channel(tiny_server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        before = memory_peak(tiny_server)
        for name, hostile in HOSTILE.items():
            assert hostile.ByteSize() <= 1024, name
            with pytest.raises(grpc.RpcError) as raised:
                stub.Predict(hostile, timeout=RPC_TIMEOUT)
            assert raised.value.code() in REFUSED, (name, raised.value.details())
        grown = memory_peak(tiny_server) - before
        # Still serving, and the peak memory barely moved.
        image = tf.make_tensor_proto(np.zeros((1, 16, 16, 1), np.uint8))
        answer = stub.Predict(unet_request("serving_default", image=image), timeout=RPC_TIMEOUT)
        assert list(answer.outputs["mask"].tensor_shape.dim)[1].size == 16
    assert grown < 100 * 2**20, f"{grown / 2**20:.0f} MiB"


def test_every_value_must_be_sent(tiny_server: ServerProcess):
    with grpc.insecure_channel(tiny_server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        hostile = HOSTILE["image 4096^2 with one value"]
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(hostile, timeout=RPC_TIMEOUT)
    assert "holds 16777216 values but the request carries 1" in raised.value.details()


def flood(tmp_path: Path, call: Callable[[ServerProcess], object]) -> tuple[object, list, int]:
    """A half_plus_two server allowing 2 requests at once: `call(server)` once to warm it,
    then 64 times at once. Returns the warm answer, the 64 answers, and the server's growth
    in peak memory over the 64 (bytes)."""
    base = tmp_path / HALF_PLUS_TWO
    export_half_plus_two(base, 1)
    flags = ["--threads", "2", "--max-concurrent-requests", "2"]
    server = ServerProcess(base, HALF_PLUS_TWO, tmp_path / "server.log", *flags)
    try:
        server.wait_available()
        warm = call(server)  # the graph is traced
        before = memory_peak(server)
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(lambda _: call(server), range(64)))
        return warm, answers, memory_peak(server) - before
    finally:
        server.terminate()
        server.wait()


def test_a_flood_is_answered_or_refused_at_once_and_memory_stays_bounded(tmp_path: Path):
    big = predict_request(
        signature="slowly", x=floats(*range(1_000_000)), iterations=np.int64(20_000)
    )
    assert big.ByteSize() > 4_000_000
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

    def one(server: ServerProcess) -> grpc.StatusCode:
        with grpc.insecure_channel(server.address, options=options) as channel:
            try:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                    big, timeout=RPC_TIMEOUT
                )
            except grpc.RpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    warm, codes, grown = flood(tmp_path, one)
    assert warm == grpc.StatusCode.OK
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
    assert codes.count(grpc.StatusCode.OK) >= 2
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
    # 64 requests of 4 MB at once, 2 let in: 68 MiB here, 137 MiB with the machine busy
    # (gRPC reads more messages before the refusals go out), where without the limit the
    # same flood took 261 MiB (the queued requests hold their messages).
    assert grown < 180 * 2**20, f"{grown / 2**20:.0f} MiB"


def test_a_rest_flood_is_answered_or_refused_at_once_and_memory_stays_bounded(tmp_path: Path):
    """The REST port holds the same line: past the limit a call is refused before its body
    is read, so a flood's memory is that of the calls let in (and of the few bodies being
    read, which are as many at most)."""
    import json
    import urllib.error
    import urllib.request

    inputs = {"x": list(range(1_000_000)), "iterations": 20_000}
    body = json.dumps({"signature_name": "slowly", "inputs": inputs}).encode()

    def one(server: ServerProcess) -> int:
        url = f"http://{server.rest_address}/v1/models/{HALF_PLUS_TWO}:predict"
        try:
            with urllib.request.urlopen(url, body, timeout=RPC_TIMEOUT) as reply:
                return reply.status
        except urllib.error.HTTPError as error:
            return error.code

    warm, codes, grown = flood(tmp_path, one)
    assert warm == 200
    assert set(codes) <= {200, 429}, set(codes)
    assert codes.count(200) >= 2 and codes.count(429) >= 1
    # 64 bodies of 6.9 MB, 2 let in: 124 MiB here (each call let in holds its JSON, parsed,
    # and as a tensor); all 64 at once would take gigabytes.
    assert grown < 400 * 2**20, f"{grown / 2**20:.0f} MiB"
