"""`unet-keras serve`'s REST API against TF Serving's documented REST API, as curl sees it.

A conformance suite: by default it starts one local server (`unet-keras serve`) for both
test models from a model config file, so two models and a version label are served over
both transports. To hold a real TensorFlow Serving to the same tests:

    python -m tests.serving_fixtures /tmp/models --serving-root /models
    docker run -p 8500:8500 -p 8501:8501 -v /tmp/models:/models tensorflow/serving \\
        --model_config_file=/models/models.config \\
        --monitoring_config_file=/models/monitoring.config \\
        --allow_version_labels_for_unavailable_models
    UNET_TF_SERVING_ADDRESS=localhost:8500 UNET_TF_SERVING_REST_ADDRESS=localhost:8501 \\
        pytest tests/server/test_rest_api.py

Tests that need the local server's files or process (a config edit while running, the
body and concurrency limits) skip against a real server.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.serving_fixtures import (
    HALF_PLUS_TWO,
    HALF_PLUS_TWO_VERSION,
    UNET,
    ServerProcess,
    export_half_plus_two,
    predict_request,
    registry_for,
    write_models,
    write_version,
)
from unet_keras import contract
from unet_keras.server.http_server import RestServer
from unet_keras.server.prometheus import Metrics

REAL_GRPC = os.environ.get("UNET_TF_SERVING_ADDRESS")
REAL_REST = os.environ.get("UNET_TF_SERVING_REST_ADDRESS")
TIMEOUT = 30.0

local_only = pytest.mark.skipif(
    REAL_REST is not None, reason="needs the local server's files or process"
)


@dataclass
class Served:
    """Where the server listens, and its model config file when it is the local one."""

    rest: str
    grpc: str
    config: Path | None = None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real TF Serving, or one local server of both models."""
    if REAL_REST is not None:
        yield Served(REAL_REST, REAL_GRPC or "")
        return
    folder = tmp_path_factory.mktemp("rest")
    write_models(folder, str(folder))
    flags = ["--allow-version-labels-for-unavailable-models", "--poll-seconds", "0.2"]
    flags += ["--monitoring-config-file", str(folder / "monitoring.config")]
    flags += ["--model-config-file-poll-wait-seconds", "0.5"]
    process = ServerProcess(folder / "models.config", UNET, folder / "server.log", *flags)
    try:
        process.wait_available()
        yield Served(process.rest_address, process.address, folder / "models.config")
    finally:
        process.terminate()
    assert process.wait() == 0


def call(served: Served, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """One HTTP call: GET without a body, POST with one; (status, JSON answer)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{served.rest}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        text = error.read()
        return error.code, json.loads(text) if text else None


def available(version: int) -> dict[str, Any]:
    """One version's entry in a status answer, as TF Serving's REST API writes it."""
    status = {"error_code": "OK", "error_message": ""}
    return {"version": str(version), "state": "AVAILABLE", "status": status}


@pytest.mark.parametrize("where", ["", f"/versions/{HALF_PLUS_TWO_VERSION}", "/labels/stable"])
def test_status(served: Served, where: str) -> None:
    status, answer = call(served, f"/v1/models/{HALF_PLUS_TWO}{where}")
    assert status == 200
    assert answer == {"model_version_status": [available(HALF_PLUS_TWO_VERSION)]}


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v1/models/nope", 404, "Could not find any versions of model nope"),
        (f"/v1/models/{HALF_PLUS_TWO}/versions/9", 404, "Could not find version 9 of model"),
        ("/v1/models", 400, "Missing model name in request."),
    ],
)
def test_status_errors(served: Served, path: str, status: int, message: str) -> None:
    code, answer = call(served, path)
    assert code == status and message in answer["error"]


def test_metadata(served: Served) -> None:
    status, answer = call(served, f"/v1/models/{HALF_PLUS_TWO}/metadata")
    assert status == 200
    assert answer["model_spec"] == {
        "name": HALF_PLUS_TWO,
        "signature_name": "",
        "version": str(HALF_PLUS_TWO_VERSION),
    }
    signature = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signature["outputs"]["y"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert signature["method_name"] == "tensorflow/serving/predict"


@pytest.mark.parametrize("where", ["", f"/versions/{HALF_PLUS_TWO_VERSION}", "/labels/stable"])
def test_predict_in_both_formats(served: Served, where: str) -> None:
    path = f"/v1/models/{HALF_PLUS_TWO}{where}:predict"
    assert call(served, path, {"instances": [1.0, 2.0, 5.0]}) == (
        200,
        {"predictions": [2.5, 3.0, 4.5]},
    )
    assert call(served, path, {"signature_name": "serving_default", "inputs": [1, 2]}) == (
        200,
        {"outputs": [2.5, 3.0]},
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("half_plus_two:predict", b"{not json", 400, "JSON Parse error"),
        ("half_plus_two:predict", b"", 400, "JSON Parse error: The document is empty"),
        ("half_plus_two:predict", b"[1]", 400, "Is not object"),
        ("half_plus_two:predict", b'{"x": 1}', 400, "Missing 'inputs' or 'instances' key"),
        (
            "half_plus_two:predict",
            b'{"inputs": [1], "instances": [1]}',
            400,
            "expecting only one of 'inputs' or 'instances' keys",
        ),
        ("half_plus_two:predict", b'{"instances": []}', 400, "No values in 'instances' array"),
        (
            "half_plus_two:predict",
            b'{"instances": ["one"]}',
            400,
            'JSON Value: "one" Type: string is not of expected type: float',
        ),
        (
            "half_plus_two:predict",
            b'{"signature_name": "nope", "instances": [1]}',
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (
            "half_plus_two/labels/nope:predict",
            b'{"instances": [1]}',
            400,
            "Unrecognized servable version label: nope",
        ),
        (
            "nope:predict",
            b'{"instances": [1]}',
            404,
            "Servable not found for request: Latest(nope)",
        ),
        ("half_plus_two", b'{"instances": [1]}', 400, "Malformed request: POST"),
    ],
)
def test_predict_errors_have_tf_servings_status_and_body(
    served: Served, path: str, body: bytes, status: int, message: str
) -> None:
    code, answer = call(served, f"/v1/models/{path}", raw=body)
    assert code == status
    assert list(answer) == ["error"] and message in answer["error"]


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def grpc_unet(served: Served) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    """The same server's gRPC port."""
    if not served.grpc:
        pytest.skip("UNET_TF_SERVING_ADDRESS is not set: nothing to compare with")
    with grpc.insecure_channel(served.grpc) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_a_rest_png_mask_equals_the_grpc_one_byte_for_byte(
    served: Served, grpc_unet: prediction_service_pb2_grpc.PredictionServiceStub
) -> None:
    images = [png(image[..., 0]) for image in _images(2)]
    body = {
        "signature_name": contract.SEGMENT_PNG,
        "instances": [{"b64": base64.b64encode(image).decode()} for image in images],
    }
    status, answer = call(served, f"/v1/models/{UNET}:predict", body)
    assert status == 200
    rest = [base64.b64decode(item["b64"]) for item in answer["predictions"]]
    request = predict_request(UNET, contract.SEGMENT_PNG, image_png=np.array(images, object))
    response = grpc_unet.Predict(request, timeout=TIMEOUT)
    assert rest == list(response.outputs[contract.MASK_PNG].string_val)
    assert rest[0].startswith(b"\x89PNG")


def test_serving_default_over_rest_equals_grpc(
    served: Served, grpc_unet: prediction_service_pb2_grpc.PredictionServiceStub
) -> None:
    image = _images(1)[0]
    status, answer = call(served, f"/v1/models/{UNET}:predict", {"instances": [image.tolist()]})
    assert status == 200
    (prediction,) = answer["predictions"]
    response = grpc_unet.Predict(predict_request(UNET, image=image[None]), timeout=TIMEOUT)
    np.testing.assert_array_equal(
        np.array(prediction[contract.MASK]), tf.make_ndarray(response.outputs[contract.MASK])[0]
    )
    np.testing.assert_array_equal(
        np.array(prediction[contract.PROBABILITIES], np.float32),
        tf.make_ndarray(response.outputs[contract.PROBABILITIES])[0],
    )


def test_the_model_record_over_rest(served: Served) -> None:
    body = {"signature_name": contract.METADATA, "inputs": {contract.METADATA_INPUT: 0}}
    status, answer = call(served, f"/v1/models/{UNET}:predict", body)
    assert status == 200
    assert json.loads(answer["outputs"])["mask"]["class_values"] == [0, 255]


def test_request_counts_and_latencies_under_tf_servings_names(served: Served) -> None:
    call(served, f"/v1/models/{HALF_PLUS_TWO}:predict", {"instances": [1.0]})
    with urllib.request.urlopen(
        f"http://{served.rest}/monitoring/prometheus/metrics", timeout=TIMEOUT
    ) as reply:
        page = reply.read().decode()
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"}' in page
    labels = 'model_name="half_plus_two",API="predict",entrypoint="REST"'
    assert f':tensorflow:serving:request_latency_bucket{{{labels},le="+Inf"}}' in page
    # The U-Net export has warmup requests, replayed once when its version loaded.
    warmups = [line for line in page.splitlines() if "model_warmup_latency_count" in line]
    assert any(f'{UNET}/1",status="OK"}} 1' in line for line in warmups), warmups


@local_only
def test_a_config_edit_while_running_takes_effect_on_both_transports(served: Served) -> None:
    original = served.config.read_text()
    label = f'version_labels {{ key: "canary" value: {HALF_PLUS_TWO_VERSION} }} '
    served.config.write_text(original.replace("version_labels", label + "version_labels", 1))
    try:
        path = f"/v1/models/{HALF_PLUS_TWO}/labels/canary:predict"
        deadline = time.monotonic() + 20
        while call(served, path, {"instances": [1.0]})[0] != 200:
            assert time.monotonic() < deadline, "the new label never took effect"
            time.sleep(0.2)
        request = predict_request(x=np.array([1.0], np.float32))
        request.model_spec.version_label = "canary"
        with grpc.insecure_channel(served.grpc) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            answer = stub.Predict(request, timeout=TIMEOUT)
        assert answer.model_spec.version.value == HALF_PLUS_TWO_VERSION
    finally:
        served.config.write_text(original)
    deadline = time.monotonic() + 20
    while call(served, path, {"instances": [1.0]})[0] != 400:
        assert time.monotonic() < deadline, "removing the label never took effect"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestServer]:
    """half_plus_two behind a REST port with a 4 KiB body limit and one call at a time."""
    base = tmp_path_factory.mktemp("small") / HALF_PLUS_TWO
    export_half_plus_two(base, 1)
    registry = registry_for(HALF_PLUS_TWO, base)
    assert registry.start(0.1, threading.Event())
    server = RestServer(
        registry, "127.0.0.1", 0, threads=2, max_body_bytes=4096, max_concurrent_requests=1,
        metrics=Metrics(),
    )  # fmt: skip
    server.start()
    yield server
    server.stop(1.0)


@local_only
def test_a_body_over_the_limit_is_refused_unread(small_server: RestServer) -> None:
    local = Served(f"127.0.0.1:{small_server.port}", "")
    status, answer = call(local, f"/v1/models/{HALF_PLUS_TWO}:predict", raw=b" " * 5000)
    assert status == 413 and "limit of 4096 bytes" in answer["error"]
    assert call(local, f"/v1/models/{HALF_PLUS_TWO}:predict", {"instances": [1.0]})[0] == 200


@local_only
def test_past_the_concurrency_limit_a_call_is_answered_429_at_once(
    small_server: RestServer,
) -> None:
    local = Served(f"127.0.0.1:{small_server.port}", "")
    slow = {"signature_name": "slowly", "inputs": {"x": [1.0], "iterations": 600_000}}
    first = threading.Thread(
        target=call, args=(local, f"/v1/models/{HALF_PLUS_TWO}:predict", slow)
    )
    first.start()
    time.sleep(0.5)
    status, answer = call(local, f"/v1/models/{HALF_PLUS_TWO}:predict", {"instances": [1.0]})
    # Refused at once: the request holding the only slot was still running.
    assert first.is_alive()
    first.join()
    assert status == 429 and "try again later" in answer["error"]


@local_only
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 2000 + b"]" * 2000,  # nesting past Python's recursion limit
        b'{"instances": [' + b"[" * 1000 + b"1" + b"]" * 1000 + b"]}",
        b'{"instances": [1e999999]}',
        b'{"instances": [{"b64": "' + b"A" * 100 + b'"}]}',
        b"\xff\xfe\x00garbage",
    ],
)
def test_hostile_bodies_get_an_error_and_the_server_keeps_serving(
    small_server: RestServer, body: bytes
) -> None:
    local = Served(f"127.0.0.1:{small_server.port}", "")
    status, answer = call(local, f"/v1/models/{HALF_PLUS_TWO}:predict", raw=body)
    assert status in (200, 400) and (status == 200 or "error" in answer)
    assert call(local, f"/v1/models/{HALF_PLUS_TWO}:predict", {"instances": [1.0]})[0] == 200


@local_only
def test_paths_outside_the_api_are_not_found(small_server: RestServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"http://127.0.0.1:{small_server.port}/v2/models", timeout=5)
    assert raised.value.code == 404


@local_only
@pytest.mark.parametrize(("origin", "status"), [("https://example.com", 200), ("", 400)])
def test_a_preflight_is_answered_without_cors_support_too(
    small_server: RestServer, origin: str, status: int
) -> None:
    """As TF Serving: OPTIONS under /v1/ is answered whatever the CORS flag, and without
    the flag no answer carries CORS headers."""
    connection = http.client.HTTPConnection("127.0.0.1", small_server.port, timeout=TIMEOUT)
    try:
        connection.request("OPTIONS", f"/v1/models/{HALF_PLUS_TWO}", headers={"Origin": origin})
        preflight = connection.getresponse()
        assert (preflight.status, preflight.read()) == (status, b"")
        connection.request("GET", f"/v1/models/{HALF_PLUS_TWO}")
        answer = connection.getresponse()
        answer.read()
    finally:
        connection.close()
    for reply in (preflight, answer):
        assert not [name for name, _ in reply.getheaders() if name.startswith("Access-")]


@local_only
def test_an_unexpected_error_is_logged_and_answered_in_tf_servings_shape(
    small_server: RestServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("unet_keras.server.http_server.handle", broken)
    local = Served(f"127.0.0.1:{small_server.port}", "")
    status, answer = call(local, f"/v1/models/{HALF_PLUS_TWO}:predict", {"instances": [1.0]})
    assert status == 500 and answer == {"error": "Internal error: RuntimeError('a bug')"}
    assert any(record.exc_info for record in caplog.records), "the bug was not logged"


class LegacyPng(tf.Module):
    """An export from before `mask_png_bytes`: segment_png's output is `mask_png`."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, "image_png")])
    def segment_png(self, image_png: tf.Tensor) -> dict[str, tf.Tensor]:
        """Returns the PNG bytes it was given, as the mask."""
        return {"mask_png": tf.identity(image_png)}


@local_only
def test_an_export_from_before_mask_png_bytes_is_still_served(tmp_path: Path) -> None:
    module = LegacyPng()
    signatures = {"serving_default": module.segment_png, "segment_png": module.segment_png}
    write_version(
        tmp_path / "old",
        1,
        lambda path: tf.saved_model.save(module, str(path), signatures=signatures),
    )
    registry = registry_for("old", tmp_path / "old")
    assert registry.start(0.1, threading.Event())
    server = RestServer(
        registry, "127.0.0.1", 0, threads=1, max_body_bytes=1 << 20, max_concurrent_requests=2
    )
    server.start()
    try:
        image = png(_images(1)[0][..., 0])
        body = {
            "signature_name": "segment_png",
            "instances": [{"b64": base64.b64encode(image).decode()}],
        }
        status, answer = call(
            Served(f"127.0.0.1:{server.port}", ""), "/v1/models/old:predict", body
        )
    finally:
        server.stop(1.0)
    # Not UTF-8, so base64 here (TF Serving would write the raw bytes into its JSON).
    assert status == 200 and base64.b64decode(answer["predictions"][0]["b64"]) == image


def _images(count: int) -> list[np.ndarray]:
    return list(np.random.default_rng(3).integers(0, 256, (count, 45, 61, 1), dtype=np.uint8))
