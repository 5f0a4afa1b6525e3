"""`unet-keras serve` under load, version swaps, a crash and malformed requests, on loopback.

One server subprocess serves a tiny U-Net (depth 1, 2 filters) for every test: 16
`SegmentationClient`s send 50 512x512 images each while version 2 is exported into the
served base path; the server is killed (SIGKILL) and restarted on its port while clients
retry; hypothesis sends malformed requests through TF Serving's official stubs. Every mask
is compared with the same SavedModel version run in this process.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.serving_fixtures import UNET, ServerProcess, save_unet, tensor, unet_request
from unet_keras.client import RetryPolicy, SegmentationClient, ServingError
from unet_keras.exports.savedmodel import export_model
from unet_keras.record import ModelConfig

# Small enough that an over-limit image fits a cheap request (1 x 1100 x 1000 uint8).
MAX_PIXELS = 2**20
# The server's message limit: what a request may carry, and so how many values it may hold.
MAX_MESSAGE_BYTES = 4 * 2**20
# A 512x512 image is then one tile (the default tile covers 516x516), run alone: the least
# CPU for these images, which a 2-core machine needs.
EXPORT_OPTIONS = {"tiles_per_call": 1, "max_pixels": MAX_PIXELS}
SEEDS = {1: 7, 2: 8}  # version -> weights; different weights give different masks
CLIENTS, REQUESTS = 16, 10
SIZE = 512
# Distinct images, cycled so that concurrent clients send different ones: a response that
# went to the wrong caller shows.
IMAGES = np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE), np.uint8)
PROBE = np.random.default_rng(1).integers(0, 256, (40, 40), np.uint8)
NO_RETRY = RetryPolicy(attempts=1)
# Long enough to outlast a restart (TensorFlow import and model load) on a busy machine.
PATIENT_RETRY = RetryPolicy(attempts=200, initial_backoff=0.05, max_backoff=0.5)
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
RPC_TIMEOUT = 60.0

pytestmark = pytest.mark.slow  # hundreds of 512x512 requests


def save_tiny_unet(path: Path, seed: int) -> Path:
    """A tiny valid-padding U-Net with weights from `seed`, as `.keras`."""
    # Depth 1 and 2 filters: 800 requests of 512x512 stay cheap; the server's work per
    # request (decoding, tiling, encoding) is the same as for a large network.
    config = ModelConfig(filters=2, depth=1, padding="valid", dropout=0.0)
    return save_unet(path, config=config, tile=(92, 76), seed=seed)


def digest(mask: np.ndarray) -> bytes:
    """A mask's fingerprint: 800 masks of 512x512 need not be kept to be compared."""
    return hashlib.sha256(repr((mask.shape, mask.dtype.str)).encode() + mask.tobytes()).digest()


class Expected:
    """Masks of the served versions, run in this process from the same directories."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._functions: dict[int, Callable[..., dict[str, tf.Tensor]]] = {}
        self._digests: dict[tuple[int, int], bytes] = {}

    def mask(self, version: int, image: np.ndarray) -> np.ndarray:
        """The [H, W] mask version `version` gives for one [H, W] image."""
        if version not in self._functions:
            loaded = tf.saved_model.load(str(self.base / str(version)))
            self._functions[version] = loaded.signatures["serving_default"]
        outputs = self._functions[version](image=tf.constant(image[None, ..., None]))
        return outputs["mask"].numpy()[0]

    def versions_by_digest(self, versions: list[int]) -> dict[int, dict[bytes, int]]:
        """For each of IMAGES, the digest of each version's mask -> that version."""
        for version in versions:
            for index, image in enumerate(IMAGES):
                if (version, index) not in self._digests:
                    self._digests[version, index] = digest(self.mask(version, image))
        return {
            index: {self._digests[version, index]: version for version in versions}
            for index in range(len(IMAGES))
        }


@dataclass
class Served:
    """The server process (replaced when a test restarts it) and what it serves."""

    process: ServerProcess
    folder: Path
    expected: Expected

    @property
    def base(self) -> Path:
        """The served base path of numbered versions."""
        return self.folder / UNET

    @property
    def address(self) -> str:
        """HOST:PORT, the same across restarts."""
        return self.process.address


def start_server(folder: Path, port: int | None = None) -> ServerProcess:
    """A server of `folder/unet` (on `port`, else a free one), once it serves."""
    flags = ["--poll-seconds", "0.2", "--max-message-bytes", str(MAX_MESSAGE_BYTES)]
    if port is not None:
        flags += ["--port", str(port)]  # after ServerProcess' own --port: argparse keeps it
    log = folder / f"server-{time.time_ns()}.log"
    process = ServerProcess(folder / UNET, UNET, log, *flags)
    if port is not None:
        process.address = f"127.0.0.1:{port}"
    process.wait_available(timeout=120)
    return process


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Version 1 served by `python -m unet_keras.server.serve`; .keras files of both versions."""
    folder = tmp_path_factory.mktemp("reliability")
    for version, seed in SEEDS.items():
        save_tiny_unet(folder / f"v{version}.keras", seed)
    export_model(folder / "v1.keras", folder / UNET, 1, **EXPORT_OPTIONS)
    served = Served(start_server(folder), folder, Expected(folder / UNET))
    try:
        yield served
    finally:
        served.process.terminate()
    assert served.process.wait() == 0, served.process.log.read_text()


@dataclass
class Outcome:
    """One request of a load: when it was sent and answered, and its mask or error."""

    image: int
    started: float
    finished: float
    mask: bytes | None = None
    error: ServingError | None = None


class Load:
    """`clients` SegmentationClients, each on its own channel, sending `requests` images each,
    or, with `until_stopped`, going on after those until `stop`.

    Runs in threads from construction; `wait_done` lets the test act mid-load.
    """

    def __init__(
        self,
        address: str,
        clients: int,
        requests: int,
        retry: RetryPolicy,
        *,
        until_stopped: bool = False,
    ) -> None:
        self._done = 0
        self._progress = threading.Condition()
        self._stopped = threading.Event()
        if not until_stopped:
            self._stopped.set()
        self._pool = ThreadPoolExecutor(clients, thread_name_prefix="load")
        self._futures = [
            self._pool.submit(self._client, address, number, requests, retry)
            for number in range(clients)
        ]

    @property
    def done(self) -> int:
        """Requests answered so far."""
        with self._progress:
            return self._done

    def stop(self) -> None:
        """Lets every client end after its current request (once it has sent `requests`)."""
        self._stopped.set()

    def _client(
        self, address: str, number: int, requests: int, retry: RetryPolicy
    ) -> list[Outcome]:
        outcomes = []
        with SegmentationClient(address, UNET, timeout=120.0, retry=retry) as client:
            for request in itertools.count():
                if request >= requests and self._stopped.is_set():
                    break
                index = (number + request) % len(IMAGES)
                started = time.monotonic()
                try:
                    mask = digest(client.segment(IMAGES[index]).mask)
                except ServingError as error:
                    outcomes.append(Outcome(index, started, time.monotonic(), error=error))
                else:
                    outcomes.append(Outcome(index, started, time.monotonic(), mask))
                with self._progress:
                    self._done += 1
                    self._progress.notify_all()
        return outcomes

    def wait_done(self, count: int, timeout: float = 300.0) -> None:
        """Blocks until `count` requests have been answered."""
        with self._progress:
            assert self._progress.wait_for(lambda: self._done >= count, timeout), (
                f"only {self._done} of {count} requests answered in {timeout} s"
            )

    def outcomes(self) -> list[Outcome]:
        """Every request's outcome, once all are answered."""
        try:
            return [outcome for future in self._futures for outcome in future.result()]
        finally:
            self._pool.shutdown()


def errors(outcomes: list[Outcome]) -> list[str]:
    """The failures, for an assertion message."""
    return [str(outcome.error) for outcome in outcomes if outcome.error is not None]


def test_concurrent_clients_get_correct_masks_and_switch_to_a_new_version(
    served: Served,
) -> None:
    # No retries: any failure shows.
    load = Load(served.address, CLIENTS, REQUESTS, NO_RETRY, until_stopped=True)
    load.wait_done(CLIENTS * REQUESTS // 4)
    exporting = time.monotonic()
    export_model(served.folder / "v2.keras", served.base, 2, **EXPORT_OPTIONS)
    with SegmentationClient(served.address, UNET, timeout=RPC_TIMEOUT) as client:
        # The old version unloads once the new one serves.
        wait_for_states(client, {2: "AVAILABLE", 1: "END"})
    load.wait_done(load.done + 4 * CLIENTS)  # requests sent after the switch
    load.stop()
    outcomes = load.outcomes()

    assert len(outcomes) >= CLIENTS * REQUESTS and not errors(outcomes), errors(outcomes)[:5]
    versions = served.expected.versions_by_digest([1, 2])
    assert all(len(by_digest) == 2 for by_digest in versions.values()), "versions look alike"
    answered = [(o, versions[o.image].get(o.mask)) for o in outcomes]
    wrong = [o for o, v in answered if v is None]
    assert not wrong, f"{len(wrong)} masks equal neither version's"
    assert all(v == 1 for o, v in answered if o.finished < exporting)
    # Once a caller has seen version 2, no request sent later gets version 1.
    switched = min(o.finished for o, v in answered if v == 2)
    late = [v for o, v in answered if o.started > switched]
    assert len(late) >= CLIENTS and set(late) == {2}, (len(late), set(late))


def wait_for_states(client: SegmentationClient, states: dict[int, str], timeout: float = 120):
    """Polls the model's version states until they are `states`."""
    deadline = time.monotonic() + timeout
    while (seen := {s["version"]: s["state"] for s in client.model_status()}) != states:
        assert time.monotonic() < deadline, f"version states {seen}, expected {states}"
        time.sleep(0.1)


def test_retries_carry_every_request_across_a_killed_and_restarted_server(
    served: Served,
) -> None:
    with SegmentationClient(served.address, UNET, timeout=RPC_TIMEOUT) as client:
        version = client.wait_until_available()
    clients, requests = CLIENTS, 5
    load = Load(served.address, clients, requests, PATIENT_RETRY)
    load.wait_done(clients)
    killed = time.monotonic()
    served.process.process.kill()
    served.process.process.wait()
    down = time.monotonic()
    served.process = start_server(served.folder, int(served.address.rsplit(":", 1)[1]))
    restarted = time.monotonic()
    outcomes = load.outcomes()

    assert len(outcomes) == clients * requests and not errors(outcomes), errors(outcomes)[:5]
    versions = served.expected.versions_by_digest([version])
    assert all(versions[o.image].get(o.mask) == version for o in outcomes)
    # Requests in flight or sent during the outage: answered after the old process was
    # gone, so by the new one, which may answer before start_server sees it serving.
    carried = [o for o in outcomes if o.started < restarted and o.finished > down]
    assert any(o.started < killed for o in carried), "no request was in flight at the kill"
    assert len(carried) >= clients, len(carried)


def image(array: np.ndarray) -> tensor_pb2.TensorProto:
    """An array as tensor_content, as tensorflow's make_tensor_proto writes it."""
    return tf.make_tensor_proto(array)


def png(array: np.ndarray) -> bytes:
    """A real 8-bit PNG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and a well-formed IHDR chunk claiming width x height grey pixels."""
    fields = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + fields
        + struct.pack(">I", zlib.crc32(fields))
    )


REAL_PNG = png(PROBE)
SIDE = st.integers(1, 12)


@st.composite
def wrong_dtypes(draw: st.DrawFn) -> predict_pb2.PredictRequest:
    """A well-shaped image in a dtype other than the signature's uint8."""
    dtype = draw(st.sampled_from(["float32", "float64", "int64", "int32", "uint16", "int8"]))
    return unet_request(image=image(np.zeros((1, draw(SIDE), draw(SIDE), 1), dtype)))


@st.composite
def wrong_shapes(draw: st.DrawFn) -> predict_pb2.PredictRequest:
    """uint8 of another rank, zero-sized, or with other than one channel."""
    shape = draw(
        st.lists(st.integers(0, 6), max_size=6).filter(
            lambda s: not (len(s) == 4 and min(s[:3]) >= 1 and s[3] == 1)
        )
    )
    return unet_request(image=image(np.zeros(shape, np.uint8)))


@st.composite
def wrong_names(draw: st.DrawFn) -> predict_pb2.PredictRequest:
    """No inputs, unknown names, or `image` with extra inputs."""
    names = draw(
        st.sets(
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8), max_size=3
        )
    )
    if draw(st.booleans()):
        names.add("image")
    if names == {"image"}:
        names = set()
    inputs = {name: image(np.zeros((1, 4, 4, 1), np.uint8)) for name in names}
    return unet_request(**inputs)


@st.composite
def over_the_pixel_limit(draw: st.DrawFn) -> predict_pb2.PredictRequest:
    """An image with every value sent whose pixel count is above the export's max_pixels."""
    height = draw(st.integers(1, 1100))
    width = -(-(MAX_PIXELS + 1) // height) + draw(st.integers(0, 40))
    return unet_request(image=image(np.zeros((1, height, width, 1), np.uint8)))


@st.composite
def huge_claims(draw: st.DrawFn) -> predict_pb2.PredictRequest:
    """A shape of at least 2**40 pixels with one value or none: TF would fill in the rest."""
    height, width = draw(st.integers(2**20, 2**31)), draw(st.integers(2**20, 2**31))
    values = draw(st.sampled_from([[], [7]]))
    return unet_request(image=tensor(types_pb2.DT_UINT8, [1, height, width, 1], int_val=values))


MALFORMED_TENSORS = st.sampled_from(
    [
        tensor(types_pb2.DT_INVALID, [1, 4, 4, 1], int_val=[1]),
        tensor(999, [1, 4, 4, 1], int_val=[1]),  # no such DataType
        tensor(types_pb2.DT_UINT8, [1, 4, 4, 1], tensor_content=b"short"),
        tensor(types_pb2.DT_UINT8, [1, 2, 2, 1], int_val=[1] * 5),  # more values than pixels
        tensor(types_pb2.DT_UINT8, [1, -1, 4, 1], int_val=[1]),
        tensor(types_pb2.DT_UINT8, [1, 2**62, 2**62, 1], int_val=[1]),  # count overflows
    ]
).map(lambda proto: unet_request(image=proto))


@st.composite
def bad_pngs(draw: st.DrawFn) -> predict_pb2.PredictRequest:
    """segment_png given random bytes, a truncated PNG or a header over the pixel limit."""
    bad = draw(
        st.one_of(
            st.binary(max_size=300),
            # Cut before the IEND chunk (12 bytes): the image data is incomplete.
            st.integers(0, len(REAL_PNG) - 13).map(lambda cut: REAL_PNG[:cut]),
            st.just(png_header(100_000, 100_000) + REAL_PNG[33:]),
            st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
            .filter(lambda size: size[0] * size[1] > MAX_PIXELS)
            .map(lambda size: png_header(*size)),
        )
    )
    batch = [REAL_PNG] * draw(st.integers(0, 2))
    batch.insert(draw(st.integers(0, len(batch))), bad)
    return unet_request("segment_png", image_png=tf.make_tensor_proto(batch))


WRONG_PNG_INPUTS = st.sampled_from(
    [
        unet_request("segment_png", image_png=image(np.zeros((1, 4, 4, 1), np.uint8))),
        unet_request("segment_png", image_png=tf.make_tensor_proto([[REAL_PNG]])),
        unet_request("segment_png", image=tf.make_tensor_proto([REAL_PNG])),
        unet_request("no_such_signature", image=image(np.zeros((1, 4, 4, 1), np.uint8))),
    ]
)
BAD_REQUESTS = st.one_of(
    wrong_dtypes(),
    wrong_shapes(),
    wrong_names(),
    over_the_pixel_limit(),
    huge_claims(),
    MALFORMED_TENSORS,
    bad_pngs(),
    WRONG_PNG_INPUTS,
)


@pytest.fixture(scope="module")
def stub(served: Served) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    """TF Serving's own PredictionService stub, on a channel without size limits."""
    unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(served.address, options=unlimited) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def assert_serves_correctly(
    stub: prediction_service_pb2_grpc.PredictionServiceStub, served: Served
) -> None:
    """A valid request gets the mask of the version that answered it."""
    response = stub.Predict(unet_request(image=image(PROBE[None, ..., None])), timeout=RPC_TIMEOUT)
    version = response.model_spec.version.value
    mask = tf.make_ndarray(response.outputs["mask"])[0]
    np.testing.assert_array_equal(mask, served.expected.mask(version, PROBE))


@settings(max_examples=40, deadline=None)
@given(request=BAD_REQUESTS)
def test_malformed_requests_are_refused_and_the_server_keeps_serving(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    served: Served,
    request: predict_pb2.PredictRequest,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=RPC_TIMEOUT)
    assert caught.value.code() in REFUSED, (caught.value.code(), caught.value.details())
    assert_serves_correctly(stub, served)


def test_a_tensor_must_carry_every_value_its_shape_holds(
    stub: prediction_service_pb2_grpc.PredictionServiceStub, served: Served
) -> None:
    # TF fills in missing values from the last one, so a request of a few bytes could
    # cost the server as much memory as its shape claims: even a small fill is refused.
    for shape in ([1, 2048, MAX_MESSAGE_BYTES // 2048 + 1, 1], [1, 40, 40, 1]):
        claim = tensor(types_pb2.DT_UINT8, shape, int_val=[7])
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(unet_request(image=claim), timeout=RPC_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "but the request carries 1" in caught.value.details()
    # Sent in full, the same image is served.
    full = tensor(types_pb2.DT_UINT8, [1, 40, 40, 1], int_val=[7] * 1600)
    response = stub.Predict(unet_request(image=full), timeout=RPC_TIMEOUT)
    mask = tf.make_ndarray(response.outputs["mask"])[0]
    expected = served.expected.mask(
        response.model_spec.version.value, np.full((40, 40), 7, np.uint8)
    )
    np.testing.assert_array_equal(mask, expected)
    assert_serves_correctly(stub, served)
