"""The client's operations, each run by both clients (the `connect` and `client` fixtures):
calls, retries, deadlines, waiting for a version, segmentation and tiling."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from tests.client.conftest import FAST_RETRY
from tests.client.fake_serving import FakeServing, fake_model, model_record
from unet_keras.client import (
    ChannelConfig,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    ServingError,
    UnavailableError,
)


def test_status_metadata_and_record(client: Any, fake: FakeServing) -> None:
    assert client.model_status() == [
        {"version": 3, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}
    ]
    signatures = client.metadata()["signatures"]
    assert signatures["serving_default"]["inputs"] == {
        "image": {"dtype": "uint8", "shape": [-1, -1, -1, 1]}
    }
    assert client.model_record() == model_record()
    assert fake.calls("Predict")[-1].model_spec.signature_name == "metadata"


def test_unavailable_is_retried_until_it_succeeds(client: Any, fake: FakeServing):
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, "Socket closed", times=2)
    assert client.model_status()[0]["state"] == "AVAILABLE"
    assert len(fake.calls("GetModelStatus")) == 3


def test_invalid_argument_is_not_retried_and_keeps_the_message(
    client: Any, fake: FakeServing
) -> None:
    fake.fail_next(grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be uint8 but float is")
    with pytest.raises(InvalidArgumentError) as raised:
        client.segment(np.zeros((4, 4), np.uint8))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == "Expects arg[0] to be uint8 but float is"
    assert "Predict: INVALID_ARGUMENT: Expects arg[0]" in str(raised.value)
    assert len(fake.calls("Predict")) == 1


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.FAILED_PRECONDITION, ServingError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.DATA_LOSS, ServingError),
    ],
)
def test_other_failures_are_typed_and_not_retried(
    client: Any, fake: FakeServing, code: grpc.StatusCode, error: type
) -> None:
    fake.fail_next(code, "no", times=2)
    with pytest.raises(error) as raised:
        client.model_status()
    assert raised.value.code == code and len(fake.calls("GetModelStatus")) == 1


def test_unknown_model_is_not_found(fake: FakeServing, connect: Any) -> None:
    with (
        connect(fake.address, "other", retry=FAST_RETRY) as other,
        pytest.raises(NotFoundError, match="Servable not found"),
    ):
        other.model_record()


def test_resource_exhausted_is_retried_when_asked(fake: FakeServing, connect: Any) -> None:
    retry = RetryPolicy(attempts=3, initial_backoff=0.01, retry_resource_exhausted=True)
    fake.fail_next(grpc.StatusCode.RESOURCE_EXHAUSTED, "Out of memory", times=2)
    with connect(fake.address, retry=retry) as patient:
        patient.model_status()
    assert len(fake.calls("GetModelStatus")) == 3


def test_retries_give_up_after_attempts_with_bounded_backoff(
    fake: FakeServing, connect: Any, slept: list[float]
) -> None:
    retry = RetryPolicy(attempts=4, initial_backoff=0.05, max_backoff=0.08)
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, "down", times=10)
    with (
        connect(fake.address, retry=retry) as patient,
        pytest.raises(UnavailableError, match="down"),
    ):
        patient.model_status()
    assert len(fake.calls("GetModelStatus")) == 4
    # Three pauses, none above the cap of its attempt.
    assert len(slept) == 3 and all(0 <= pause <= 0.08 for pause in slept), slept


def test_retries_stop_at_the_deadline(fake: FakeServing, connect: Any, slept: list[float]) -> None:
    retry = RetryPolicy(attempts=10_000, initial_backoff=0.02, max_backoff=0.02)
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, "down", times=10_000)
    # The last error is the server's if the deadline falls in a backoff, ours if it falls in
    # a call (a slow machine): gRPC's own retries answer the same way.
    with (
        connect(fake.address, retry=retry, timeout=0.3) as patient,
        pytest.raises((UnavailableError, DeadlineExceededError)),
    ):
        patient.model_status()
    assert 1 < len(fake.calls("GetModelStatus")) < 10_000
    # Stopped by the deadline: the pauses together stay within it.
    assert sum(slept) <= 0.3 + 1e-6, sum(slept)


def test_slow_calls_raise_deadline_exceeded(client: Any, fake: FakeServing):
    fake.delay = 1.0
    with pytest.raises(DeadlineExceededError) as raised:
        client.model_status(timeout=0.2)
    # Raised at the deadline: the server was still on the call, a second from its answer.
    assert fake.in_flight == 1
    assert isinstance(raised.value, TimeoutError) and len(fake.calls("GetModelStatus")) == 1


def test_wait_until_available_polls_through_loading(client: Any, fake: FakeServing) -> None:
    fake.statuses = [
        (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model unet"),
        [(1, "START")],
        [(1, "LOADING")],
        [(1, "AVAILABLE"), (2, "LOADING")],
    ]
    assert client.wait_until_available(timeout=5, poll_interval=0.01) == 1
    assert len(fake.calls("GetModelStatus")) == 4
    fake.statuses = [[(1, "LOADING")]]
    with pytest.raises(DeadlineExceededError, match="version 1 LOADING"):
        client.wait_until_available(timeout=2.0, poll_interval=0.05)


def test_versions_and_labels_reach_the_model_spec(client: Any, fake: FakeServing):
    client.segment(np.zeros((3, 3), np.uint8), version=5)
    client.segment(np.zeros((3, 3), np.uint8), version="canary")
    first, second = fake.calls("Predict")
    assert first.model_spec.version.value == 5 and first.model_spec.signature_name == (
        "serving_default"
    )
    assert second.model_spec.version_label == "canary"
    assert list(first.output_filter) == ["mask"]
    with pytest.raises(TypeError, match="version must be"):
        client.segment(np.zeros((3, 3), np.uint8), version=2.0)


def test_segment_one_request(client: Any, fake: FakeServing) -> None:
    image = np.random.default_rng(1).integers(0, 256, (50, 70), dtype=np.uint8)
    result = client.segment(image)
    expected = fake_model(image[None, ..., None], 0, 1)
    np.testing.assert_array_equal(result.mask, expected["mask"][0])
    assert result.probabilities is None and len(fake.calls("Predict")) == 1
    with_probabilities = client.segment(image[..., None], probabilities=True)
    np.testing.assert_array_equal(with_probabilities.probabilities, expected["probabilities"][0])
    with pytest.raises(ValueError, match=r"\[H, W\] or \[H, W, C\]"):
        client.segment(np.zeros((1, 4, 4, 1), np.uint8))


@pytest.mark.parametrize("probabilities", [False, True])
def test_tiled_segment_equals_one_request(probabilities: bool, connect: Any) -> None:
    # The record says depth 4. A depth-4 valid U-Net's output pixel reaches up to 107
    # pixels (92 + 15, by its place on the pooling grid) and pools on 16-pixel cells; the
    # fake model does the same.
    fake = FakeServing(radius=107, block=16).start()
    limit = 160 * 1024
    tight = ChannelConfig(max_send_bytes=limit, max_receive_bytes=limit * 6)
    image = np.random.default_rng(2).integers(0, 256, (700, 530), dtype=np.uint8)
    try:
        with connect(fake.address) as roomy:
            whole = roomy.segment(image, probabilities=probabilities)
        fake.requests.clear()
        with connect(fake.address, channel=tight) as tiled_client:
            tiled = tiled_client.segment(image, probabilities=probabilities)
    finally:
        fake.stop()
    tiles = [r for r in fake.calls("Predict") if r.model_spec.signature_name != "metadata"]
    assert len(tiles) > 4
    # Every response fitted too: the client would have failed with RESOURCE_EXHAUSTED.
    assert max(r.ByteSize() for r in tiles) <= limit
    np.testing.assert_array_equal(tiled.mask, whole.mask)
    assert 0.2 < (whole.mask == 255).mean() < 0.8
    if probabilities:
        np.testing.assert_array_equal(tiled.probabilities, whole.probabilities)


def test_too_little_context_or_an_off_grid_tile_shows(fake: FakeServing, connect: Any) -> None:
    fake.radius, fake.block = 40, 16
    image = np.random.default_rng(3).integers(0, 256, (400, 400), dtype=np.uint8)

    def segment(**settings: Any) -> np.ndarray:
        with connect(fake.address, **settings) as connected:
            return connected.segment(image).mask

    whole = segment()
    tight = ChannelConfig(max_send_bytes=60_000)
    np.testing.assert_array_equal(segment(channel=tight, context=40, grid=16), whole)
    assert (segment(channel=tight, context=30, grid=16) != whole).any()
    assert (segment(channel=tight, context=40, grid=5) != whole).any()


def test_a_limit_too_small_to_tile_is_explained(fake: FakeServing, connect: Any) -> None:
    channel = ChannelConfig(max_send_bytes=8192)
    with (
        connect(fake.address, channel=channel) as tiny,
        pytest.raises(ValueError, match="raise the message size limit"),
    ):
        tiny.segment(np.zeros((300, 300), np.uint8))


def test_segment_many_keeps_order_and_bounds_concurrency(client: Any, fake: FakeServing) -> None:
    fake.delay = 0.1
    images = [np.full((10 + i, 12), 20 * i, np.uint8) for i in range(8)]
    results = client.segment_many(images, concurrency=4)
    assert [r.mask.shape for r in results] == [(10 + i, 12) for i in range(8)]
    assert [int(r.mask[0, 0]) for r in results] == [255 if 20 * i > 127 else 0 for i in range(8)]
    assert 2 <= fake.most_in_flight <= 4


@pytest.fixture(scope="module")
def same_padding_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`unet-keras serve` of a same-padding tiny U-Net; (ServerProcess, version folder)."""
    from tests.serving_fixtures import UNET, ServerProcess, save_unet
    from unet_keras.exports.savedmodel import export_model
    from unet_keras.record import ModelConfig

    folder = tmp_path_factory.mktemp("same")
    config = ModelConfig(filters=4, depth=2, padding="same", dropout=0.0)
    model = save_unet(folder / "model.keras", config=config, tile=(64, 64))
    version = export_model(model, folder / UNET)
    server = ServerProcess(folder / UNET, UNET, folder / "server.log")
    server.wait_available()
    yield server, version
    server.terminate()
    server.wait()


def served_directly(version: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """The export's serving_default on one image, in this process."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    outputs = signature(image=tf.constant(image[None, ..., None]))
    return {name: value.numpy()[0] for name, value in outputs.items()}


@pytest.mark.parametrize("probabilities", [False, True])
def test_both_clients_get_what_the_export_computes_from_the_local_server(
    tiny_server: Any, tiny_export: Any, connect: Any, probabilities: bool
) -> None:
    """Against `unet-keras serve` of the tiny (valid-padding) export, tiled under a 40 kB
    limit: exactly the export's own masks and probabilities, and its record."""
    from tests.serving_fixtures import TINY_NORMALIZATION

    image = np.random.default_rng(6).integers(0, 256, (300, 260), dtype=np.uint8)
    expected = served_directly(tiny_export, image)
    tight = ChannelConfig(max_send_bytes=40_000, max_receive_bytes=160_000)
    with connect(tiny_server.address, timeout=30, channel=tight) as served:
        served.wait_until_available(timeout=60)
        assert served.model_record().normalization == TINY_NORMALIZATION
        result = served.segment(image, probabilities=probabilities)
    np.testing.assert_array_equal(result.mask, expected["mask"])
    if probabilities:
        np.testing.assert_allclose(result.probabilities, expected["probabilities"], atol=1e-5)


def test_same_padding_through_the_local_server_tiled_and_whole(
    same_padding_server: Any, connect: Any
) -> None:
    """Same padding: tiled requests agree with one request but for a few pixels near
    window borders (zero padding there), which valid padding does not have."""
    server, version = same_padding_server
    image = np.random.default_rng(8).integers(0, 256, (240, 200), dtype=np.uint8)
    expected = served_directly(version, image)["mask"]
    tight = ChannelConfig(max_send_bytes=20_000, max_receive_bytes=80_000)
    with connect(server.address, timeout=30, channel=tight) as served:
        mask = served.segment(image, probabilities=True).mask
    assert mask.shape == expected.shape
    assert np.mean(mask == expected) > 0.98


def test_unet_client_writes_what_the_export_computes(
    tiny_server: Any, tiny_export: Any, tmp_path: Any
) -> None:
    from PIL import Image

    from unet_keras.client import command as client_cli

    image = np.random.default_rng(7).integers(0, 256, (150, 170), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    arguments = ["segment", str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]
    assert client_cli.main([*arguments, "--server", tiny_server.address, "--wait", "60"]) == 0
    written = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    np.testing.assert_array_equal(written, served_directly(tiny_export, image)["mask"])


def test_unet_client_labels_objects_as_predict_does(
    tiny_server: Any, tiny_export: Any, tmp_path: Any
) -> None:
    """--instances: the labels written from the served mask are those unet-keras predict
    computes from the same classes (one function), without TensorFlow in the client."""
    import tifffile
    from PIL import Image

    from unet_keras.client import command as client_cli
    from unet_keras.inference.inference_settings import InstanceConfig
    from unet_keras.inference.instances import label_objects
    from unet_keras.io.masks import mask_to_labels
    from unet_keras.saving import read_record

    image = np.random.default_rng(9).integers(0, 256, (150, 170), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    arguments = ["segment", str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]
    arguments += ["--server", tiny_server.address, "--wait", "60", "--instances", "watershed"]
    assert client_cli.main(arguments) == 0
    labels = tifffile.imread(tmp_path / "out" / "a_labels.tif")
    record = read_record(tiny_export.parent.parent / "model.keras")  # what was exported
    classes = mask_to_labels(served_directly(tiny_export, image)["mask"], record.mask)
    expected = label_objects(classes, InstanceConfig(instances="watershed"))
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint32 and labels.max() > 0
