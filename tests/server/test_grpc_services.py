"""`unet-keras serve` against TF Serving's behaviour, through the official gRPC stubs.

A conformance suite: by default it starts local servers (`unet-keras serve`), one per
model. To hold a real TensorFlow Serving to the same tests:

    python -m tests.serving_fixtures /tmp/models --serving-root /models
    docker run -p 8500:8500 -v /tmp/models:/models tensorflow/serving \\
        --model_config_file=/models/models.config
    UNET_TF_SERVING_ADDRESS=localhost:8500 UNET_TF_SERVING_MODELS=/tmp/models \\
        pytest tests/server/test_grpc_services.py

The real server must serve exactly those models: `half_plus_two` (version 123: y = 0.5 x + 2
on float32 `x` [None], plus a signature `slowly`) and `unet` (version 1, the seeded tiny
U-Net export). UNET_TF_SERVING_MODELS, the folder the models were written to, lets the
U-Net tests compare the served results with the same SavedModel run here; without it they
skip. Tests that need the local server's files or process (version hot-swap, start-up
TLS) skip against a real server.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.serving_fixtures import (
    HALF_PLUS_TWO,
    HALF_PLUS_TWO_VERSION,
    UNET,
    UNET_VERSION,
    ServerProcess,
    certificates,
    export_half_plus_two,
    export_unet,
    floats,
    predict_request,
    registry_for,
    write_garbage,
    write_version,
)
from unet_keras.server.grpc_services import TlsFiles, build_server
from unet_keras.server.models import ModelRegistry
from unet_keras.server.server_settings import MAX_MESSAGE_BYTES
from unet_keras.server.status import StatusError

REAL_ADDRESS = os.environ.get("UNET_TF_SERVING_ADDRESS")
REAL_MODELS = os.environ.get("UNET_TF_SERVING_MODELS")
RPC_TIMEOUT = 30.0
# Empty loop steps of half_plus_two's `slowly`: about 2 s on one core.
SLOW_ITERATIONS = 300_000
# Both directions unlimited on the client, to test the server's own limits.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
State = get_model_status_pb2.ModelVersionStatus.State
Code = grpc.StatusCode
PredictionStub = prediction_service_pb2_grpc.PredictionServiceStub
ModelStub = model_service_pb2_grpc.ModelServiceStub

local_only = pytest.mark.skipif(
    REAL_ADDRESS is not None, reason="needs the local server's files or process"
)


@contextmanager
def serve_here(
    base: Path, name: str, tls: TlsFiles | None = None
) -> Iterator[tuple[str, ModelRegistry]]:
    """A server in this process polling `base` every 0.1 s: (port, registry)."""
    manager = registry_for(name, base)
    stop = threading.Event()
    assert manager.start(0.1, stop)
    grpc_server, port = build_server(
        manager, "127.0.0.1:0", threads=4, max_message_bytes=MAX_MESSAGE_BYTES, tls=tls
    )
    grpc_server.start()
    poller = threading.Thread(target=manager.poll_until, args=(0.1, stop))
    poller.start()
    try:
        yield str(port), manager
    finally:
        stop.set()
        grpc_server.stop(None)
        poller.join()


@dataclass
class Served:
    """Where each model is served, and the folder of its files when the tests can read it."""

    addresses: dict[str, str]
    folder: Path | None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real TF Serving, or local servers."""
    if REAL_ADDRESS is not None:
        folder = Path(REAL_MODELS) if REAL_MODELS else None
        yield Served(dict.fromkeys((HALF_PLUS_TWO, UNET), REAL_ADDRESS), folder)
        return
    folder = tmp_path_factory.mktemp("served")
    export_half_plus_two(folder / HALF_PLUS_TWO, HALF_PLUS_TWO_VERSION)
    # half_plus_two by `python -m unet_keras.server.serve`; the U-Net in this process, which
    # spares the machine a second TensorFlow start.
    process = ServerProcess(folder / HALF_PLUS_TWO, HALF_PLUS_TWO, folder / "half.log")
    try:
        export_unet(folder)
        with serve_here(folder / UNET, UNET) as (port, _):
            process.wait_available()
            addresses = {HALF_PLUS_TWO: process.address, UNET: f"127.0.0.1:{port}"}
            yield Served(addresses, folder)
    finally:
        process.terminate()
    assert process.wait() == 0  # SIGTERM ends a server process cleanly


@pytest.fixture(scope="module")
def channels(served: Served) -> Iterator[dict[str, grpc.Channel]]:
    """One channel per model."""
    opened = {
        name: grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        for name, address in served.addresses.items()
    }
    yield opened
    for channel in opened.values():
        channel.close()


@pytest.fixture(scope="module")
def half(channels: dict[str, grpc.Channel]) -> PredictionStub:
    """PredictionService of the server of half_plus_two."""
    return PredictionStub(channels[HALF_PLUS_TWO])


@pytest.fixture(scope="module")
def half_models(channels: dict[str, grpc.Channel]) -> ModelStub:
    """ModelService of the server of half_plus_two."""
    return ModelStub(channels[HALF_PLUS_TWO])


@pytest.fixture(scope="module")
def unet(channels: dict[str, grpc.Channel]) -> PredictionStub:
    """PredictionService of the server of the U-Net."""
    return PredictionStub(channels[UNET])


@pytest.fixture(scope="module")
def unet_here(served: Served) -> tf.Module:
    """The served U-Net version, loaded in this process."""
    if served.folder is None:
        pytest.skip("UNET_TF_SERVING_MODELS is not set: the served files are unknown")
    return tf.saved_model.load(str(served.folder / UNET / str(UNET_VERSION)))


def status_request(
    model: str = HALF_PLUS_TWO, version: int | None = None
) -> get_model_status_pb2.GetModelStatusRequest:
    """A GetModelStatusRequest."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    return request


def metadata_request(
    model: str = HALF_PLUS_TWO, *fields: str
) -> get_model_metadata_pb2.GetModelMetadataRequest:
    """A GetModelMetadataRequest for `fields` (default: signature_def)."""
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    request.metadata_field.extend(fields or ["signature_def"])
    return request


def assert_fails(call: Callable, request: object, code: grpc.StatusCode, message: str) -> None:
    """The call fails with exactly this code and message."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=RPC_TIMEOUT)
    assert (caught.value.code(), caught.value.details()) == (code, message)


def states(models: ModelStub, name: str) -> dict[int, int]:
    """Version -> state, in the order GetModelStatus lists them."""
    response = models.GetModelStatus(status_request(name), timeout=RPC_TIMEOUT)
    return {status.version: status.state for status in response.model_version_status}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Polls `condition` until it holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def test_predict_returns_typed_values_and_the_resolved_model_spec(half: PredictionStub) -> None:
    response = half.Predict(predict_request(x=floats(1, 2, 5)), timeout=RPC_TIMEOUT)
    y = response.outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in y.tensor_shape.dim] == [3]
    # AsProtoField, TF Serving's default: values in float_val, no tensor_content.
    assert list(y.float_val) == [2.5, 3.0, 4.5] and not y.tensor_content
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == (
        HALF_PLUS_TWO,
        HALF_PLUS_TWO_VERSION,
        "serving_default",
    )


def test_predict_as_tf_servings_own_test_sends_it(half: PredictionStub) -> None:
    # tensorflow_model_server_test_base.py VerifyPredictRequest: typed input, output filter.
    request = predict_request(signature="serving_default")
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    request.output_filter.append("y")
    response = half.Predict(request, timeout=RPC_TIMEOUT)
    assert list(response.outputs["y"].float_val) == [3.0]
    assert response.model_spec.signature_name == "serving_default"


def test_explicit_version_and_unknown_versions_models_and_specs(half: PredictionStub) -> None:
    request = predict_request(x=floats(2))
    request.model_spec.version.value = HALF_PLUS_TWO_VERSION
    assert half.Predict(request, timeout=RPC_TIMEOUT).model_spec.version.value == 123
    request.model_spec.version.value = 7
    message = f"Servable not found for request: Specific({HALF_PLUS_TWO}, 7)"
    assert_fails(half.Predict, request, Code.NOT_FOUND, message)
    message = "Servable not found for request: Latest(nope)"
    assert_fails(half.Predict, predict_request("nope", x=floats(2)), Code.NOT_FOUND, message)
    nameless = predict_request("", x=floats(2))
    assert_fails(half.Predict, nameless, Code.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    labelled = predict_request(x=floats(2))
    labelled.model_spec.version_label = "stable"
    message = "Unrecognized servable version label: stable"
    assert_fails(half.Predict, labelled, Code.INVALID_ARGUMENT, message)
    no_spec = predict_pb2.PredictRequest()
    assert_fails(half.Predict, no_spec, Code.INVALID_ARGUMENT, "Missing ModelSpec")


def test_unknown_signature(half: PredictionStub) -> None:
    request = predict_request(signature="nope", x=floats(2))
    message = 'Serving signature key "nope" not found.'
    assert_fails(half.Predict, request, Code.FAILED_PRECONDITION, message)


def test_wrong_dtype_missing_extra_and_misnamed_inputs(half: PredictionStub) -> None:
    message = "Expects arg[0] to be float but int32 is provided"
    request = predict_request(x=np.array([2], np.int32))
    assert_fails(half.Predict, request, Code.INVALID_ARGUMENT, message)
    message = (
        "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. "
        "Missing but required: {x}."
    )
    assert_fails(half.Predict, predict_request(), Code.INVALID_ARGUMENT, message)
    message = (
        "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. "
        "Missing but required: {}."
    )
    request = predict_request(x=floats(2), z=floats(2))
    assert_fails(half.Predict, request, Code.INVALID_ARGUMENT, message)
    message = (
        "Signature input alias: x(feed name: serving_default_x:0) not found in request and no "
        "default value provided. Inputs expected to be in the request {z}, or default input "
        "alias set: "
    )
    assert_fails(half.Predict, predict_request(z=floats(2)), Code.INVALID_ARGUMENT, message)


def test_output_filter(half: PredictionStub) -> None:
    request = predict_request(x=floats(2))
    request.output_filter.append("y")
    assert list(half.Predict(request, timeout=RPC_TIMEOUT).outputs) == ["y"]
    request.output_filter.append("y")
    message = "duplicate output tensor alias: y"
    assert_fails(half.Predict, request, Code.INVALID_ARGUMENT, message)
    del request.output_filter[:]
    request.output_filter.append("z")
    message = (
        "output tensor alias not found in signature: z Outputs expected to be in the set {y}."
    )
    assert_fails(half.Predict, request, Code.INVALID_ARGUMENT, message)


def test_messages_past_grpcs_default_4_mib_limit(half: PredictionStub) -> None:
    values = np.arange(1_500_000, dtype=np.float32)  # 6 MB each way
    response = half.Predict(predict_request(x=values), timeout=RPC_TIMEOUT)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), values * 0.5 + 2)


def test_get_model_metadata_packs_every_signature(half: PredictionStub) -> None:
    response = half.GetModelMetadata(metadata_request(), timeout=RPC_TIMEOUT)
    assert (response.model_spec.name, response.model_spec.version.value) == (HALF_PLUS_TWO, 123)
    assert list(response.metadata) == ["signature_def"]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default", "slowly", "__saved_model_init_op"}
    default = signatures.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    for tensor in (default.inputs["x"], default.outputs["y"]):
        assert tensor.dtype == types_pb2.DT_FLOAT
        assert [d.size for d in tensor.tensor_shape.dim] == [-1]
    assert set(signatures.signature_def["slowly"].inputs) == {"x", "iterations"}


def test_get_model_metadata_errors(half: PredictionStub) -> None:
    message = "Metadata field foo is not supported"
    request = metadata_request(HALF_PLUS_TWO, "foo")
    assert_fails(half.GetModelMetadata, request, Code.INVALID_ARGUMENT, message)
    request = metadata_request()
    del request.metadata_field[:]
    message = "GetModelMetadataRequest must specify at least one metadata_field"
    assert_fails(half.GetModelMetadata, request, Code.INVALID_ARGUMENT, message)
    message = "Servable not found for request: Latest(nope)"
    assert_fails(half.GetModelMetadata, metadata_request("nope"), Code.NOT_FOUND, message)
    no_spec = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    assert_fails(half.GetModelMetadata, no_spec, Code.INVALID_ARGUMENT, "Missing ModelSpec")


def test_get_model_status(half_models: ModelStub) -> None:
    for request in (status_request(), status_request(version=HALF_PLUS_TWO_VERSION)):
        response = half_models.GetModelStatus(request, timeout=RPC_TIMEOUT)
        [version] = response.model_version_status
        assert (version.version, version.state) == (HALF_PLUS_TWO_VERSION, State.AVAILABLE)
        assert version.HasField("status") and version.status.error_code == 0
        assert version.status.error_message == ""
    message = f"Could not find version 7 of model {HALF_PLUS_TWO}"
    request = status_request(version=7)
    assert_fails(half_models.GetModelStatus, request, Code.NOT_FOUND, message)
    message = "Could not find any versions of model nope"
    assert_fails(half_models.GetModelStatus, status_request("nope"), Code.NOT_FOUND, message)


def test_a_passed_deadline_is_deadline_exceeded(unet: PredictionStub) -> None:
    image = np.random.default_rng(0).integers(0, 256, (1, 512, 512, 1), np.uint8)
    with pytest.raises(grpc.RpcError) as caught:
        unet.Predict(predict_request(UNET, image=image), timeout=0.001)
    assert caught.value.code() == Code.DEADLINE_EXCEEDED


def test_unet_outputs_equal_the_savedmodel_run_here(
    unet: PredictionStub, unet_here: tf.Module
) -> None:
    image = np.random.default_rng(1).integers(0, 256, (1, 100, 130, 1), np.uint8)
    response = unet.Predict(predict_request(UNET, image=image), timeout=RPC_TIMEOUT)
    expected = unet_here.signatures["serving_default"](image=tf.constant(image))
    served = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    np.testing.assert_allclose(served["probabilities"], expected["probabilities"], atol=1e-6)
    np.testing.assert_array_equal(served["mask"], expected["mask"])
    assert served["mask"].dtype == np.uint8 and response.model_spec.version.value == UNET_VERSION


def test_unet_segment_png_equals_the_savedmodel_run_here(
    unet: PredictionStub, unet_here: tf.Module
) -> None:
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, shape, np.uint8) for shape in ((40, 33, 1), (20, 61, 1))]
    pngs = [tf.io.encode_png(image).numpy() for image in images]
    request = predict_request(UNET, "segment_png", image_png=np.array(pngs, object))
    response = unet.Predict(request, timeout=RPC_TIMEOUT)
    expected = unet_here.signatures["segment_png"](image_png=tf.constant(pngs))["mask_png_bytes"]
    assert list(response.outputs["mask_png_bytes"].string_val) == list(expected.numpy())
    assert response.model_spec.signature_name == "segment_png"


def test_unet_metadata_signature_takes_no_inputs(
    unet: PredictionStub, unet_here: tf.Module
) -> None:
    response = unet.Predict(predict_request(UNET, "metadata"), timeout=RPC_TIMEOUT)
    record = response.outputs["metadata"]
    assert record.dtype == types_pb2.DT_STRING and not record.tensor_shape.dim
    expected = unet_here.signatures["metadata"](unused=tf.constant(0))["metadata"].numpy()
    assert json.loads(record.string_val[0]) == json.loads(expected)


def test_graph_errors_keep_their_code_and_message(unet: PredictionStub) -> None:
    empty = np.zeros((1, 0, 5, 1), np.uint8)
    with pytest.raises(grpc.RpcError) as caught:
        unet.Predict(predict_request(UNET, image=empty), timeout=RPC_TIMEOUT)
    assert caught.value.code() == Code.INVALID_ARGUMENT
    # Whichever op fails first (the graph's size check or a gather), its text as the
    # runtime gives it, without the Python runtime's wrapping.
    details = caught.value.details()
    assert "[[{{node " in details and "Graph execution error" not in details
    assert "[Op:" not in details


@local_only
def test_versions_hot_swap_and_broken_versions_are_never_served(tmp_path: Path) -> None:
    base = tmp_path / HALF_PLUS_TWO
    export_half_plus_two(base, 1)
    (base / "notes").mkdir()  # neither of these is a version
    (base / ".9").mkdir()
    with (
        serve_here(base, HALF_PLUS_TWO) as (port, _),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = PredictionStub(channel)
        models = ModelStub(channel)
        slow = predict_request(
            signature="slowly", x=floats(2), iterations=np.int64(SLOW_ITERATIONS)
        )
        answer = stub.Predict(predict_request(x=floats(2)), timeout=RPC_TIMEOUT)
        assert (answer.model_spec.version.value, list(answer.outputs["y"].float_val)) == (1, [3])
        in_flight = stub.Predict.future(slow, timeout=RPC_TIMEOUT)
        # Half plus three: answers tell the versions apart.
        export_half_plus_two(base, 2, b=3.0)
        wait_for(lambda: states(models, HALF_PLUS_TWO).get(2) == State.AVAILABLE, "2 loads")
        # Version 1 still had the request when 2 became available: it was loaded before 1
        # could unload, and 1 waits for the request.
        assert not in_flight.done(), "the slow request ended before version 2 loaded"
        assert states(models, HALF_PLUS_TWO)[1] in (State.AVAILABLE, State.UNLOADING)
        wait_for(lambda: states(models, HALF_PLUS_TWO)[1] != State.AVAILABLE, "1 unloads")
        # The old version finishes the request it had when the new one took over.
        answer = in_flight.result()
        assert (answer.model_spec.version.value, list(answer.outputs["y"].float_val)) == (1, [3])
        wait_for(lambda: states(models, HALF_PLUS_TWO)[1] == State.END, "1 unloads")
        answer = stub.Predict(predict_request(x=floats(2)), timeout=RPC_TIMEOUT)
        assert (answer.model_spec.version.value, list(answer.outputs["y"].float_val)) == (2, [4])
        pinned = predict_request(x=floats(2))
        pinned.model_spec.version.value = 1
        message = f"Servable not found for request: Specific({HALF_PLUS_TWO}, 1)"
        assert_fails(stub.Predict, pinned, Code.NOT_FOUND, message)

        # One at a time: of versions that appear together only the latest is ever tried.
        write_version(base, 3, write_garbage)
        wait_for(lambda: states(models, HALF_PLUS_TWO).get(3) == State.END, "3 fails")
        write_version(base, 4, Path.mkdir)  # no saved_model.pb at all
        wait_for(lambda: states(models, HALF_PLUS_TWO).get(4) == State.END, "4 fails")
        response = models.GetModelStatus(status_request(), timeout=RPC_TIMEOUT)
        listed = {s.version: s for s in response.model_version_status}
        assert list(listed) == [4, 3, 2, 1]
        assert [listed[v].state for v in (3, 2)] == [State.END, State.AVAILABLE]
        assert (listed[3].status.error_code, listed[3].status.error_message) == (
            Code.DATA_LOSS.value[0],
            f"Can't parse {base / '3' / 'saved_model.pb'} as binary proto",
        )
        assert listed[4].status.error_code == Code.NOT_FOUND.value[0]
        assert listed[4].status.error_message.startswith(
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {base}/4"
        )
        answer = stub.Predict(predict_request(x=floats(2)), timeout=RPC_TIMEOUT)
        assert answer.model_spec.version.value == 2


@local_only
def test_removing_every_version_unloads_the_model(tmp_path: Path) -> None:
    base = tmp_path / HALF_PLUS_TWO
    export_half_plus_two(base, 1)
    with serve_here(base, HALF_PLUS_TWO) as (_, manager):

        def state() -> int:
            return manager.status(status_request().model_spec).model_version_status[0].state

        shutil.rmtree(base / "1")
        wait_for(lambda: state() == State.END, "1 unloads")
        with (
            pytest.raises(StatusError, match=r"Latest\(half_plus_two\)"),
            manager.servable(predict_request().model_spec),
        ):
            pass


@local_only
def test_tls(tmp_path: Path) -> None:
    pem = certificates(tmp_path)
    base = tmp_path / HALF_PLUS_TWO
    export_half_plus_two(base, 1)
    credentials = grpc.ssl_channel_credentials(root_certificates=pem["ca.pem"].read_bytes())
    tls = TlsFiles(pem["server.key"].read_bytes(), pem["server.pem"].read_bytes())
    with (
        serve_here(base, HALF_PLUS_TWO, tls=tls) as (port, _),
        grpc.secure_channel(f"localhost:{port}", credentials) as channel,
    ):
        stub = PredictionStub(channel)
        answer = stub.Predict(predict_request(x=floats(2)), timeout=RPC_TIMEOUT)
        assert list(answer.outputs["y"].float_val) == [3.0]
