"""unet_keras.client: wire compatibility with TF Serving, tensors, retries, tiling, CLI."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from PIL import Image

from tests.fake_serving import FakeServing, fake_model, model_record
from unet_keras.client import (
    AsyncSegmentationClient,
    ChannelConfig,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    SegmentationClient,
    ServingError,
    UnavailableError,
    make_ndarray,
    make_tensor_proto,
    messages,
)
from unet_keras.client import cli as client_cli

FAST_RETRY = RetryPolicy(attempts=4, initial_backoff=0.01, max_backoff=0.02)
DTYPES = ["uint8", "uint16", "int8", "int16", "int32", "int64", "uint32", "uint64"]
DTYPES += ["float16", "float32", "float64", "bool"]


@pytest.fixture(scope="module")
def tf() -> types.SimpleNamespace:
    """TensorFlow and TF Serving's own message modules, imported after the client's."""
    tensorflow = pytest.importorskip("tensorflow")
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2,
        predict_pb2,
        prediction_service_pb2,
    )

    return types.SimpleNamespace(
        tf=tensorflow,
        tensor_pb2=tensor_pb2,
        predict_pb2=predict_pb2,
        get_model_metadata_pb2=get_model_metadata_pb2,
        get_model_status_pb2=get_model_status_pb2,
        services=(model_service_pb2, prediction_service_pb2),
    )


@pytest.fixture
def fake() -> Any:
    """A running fake server."""
    server = FakeServing().start()
    yield server
    server.stop()


@pytest.fixture
def client(fake: FakeServing) -> Any:
    """A blocking client of the fake server with quick retries."""
    with SegmentationClient(fake.address, timeout=5, retry=FAST_RETRY) as connected:
        yield connected


def tree(message: Any, like: Any = None) -> Any:
    """A message as plain data, field by field, over the fields of descriptor `like`.

    `like` (one of the client's descriptors) lets a TF Serving message be read over the
    client's fields only, by name; without it the message's own fields are walked.
    """
    out = {}
    for field in (like or message.DESCRIPTOR).fields:
        value = getattr(message, field.name)
        nested = field.message_type
        if nested is not None and nested.GetOptions().map_entry:
            value_type = nested.fields_by_name["value"].message_type
            sub = value_type if like is not None else None
            out[field.name] = {k: tree(v, sub) if value_type else v for k, v in value.items()}
        elif field.is_repeated:
            sub = nested if like is not None else None
            out[field.name] = [tree(v, sub) if nested else v for v in value]
        elif nested is not None:
            sub = nested if like is not None else None
            out[field.name] = tree(value, sub) if message.HasField(field.name) else None
        else:
            out[field.name] = value
    return out


def wire_twin(ours: Any, theirs_class: Any) -> Any:
    """`ours` serialized and parsed with TF Serving's class; checked field by field both ways."""
    theirs = theirs_class.FromString(ours.SerializeToString())
    assert tree(theirs, ours.DESCRIPTOR) == tree(ours)
    back = type(ours).FromString(theirs.SerializeToString())
    assert tree(back) == tree(ours)
    return theirs


# --- import cost and private descriptors -----------------------------------------------


def test_import_is_fast_and_loads_no_tensorflow() -> None:
    # CPU seconds: on a busy machine wall time mostly measures the wait for a core.
    code = (
        "import sys, time; t = time.process_time(); import unet_keras.client; "
        "print(time.process_time() - t, any(m.split('.')[0] in ('tensorflow', "
        "'tensorflow_serving', 'keras') for m in sys.modules))"
    )
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        runs.append(float(out[0]))
        assert out[1] == "False", "importing unet_keras.client loaded TensorFlow"
    assert min(runs) < 0.5, f"a cold import took {min(runs):.3f} CPU seconds at best of 3"


def test_descriptors_match_tensorflow_serving(tf: types.SimpleNamespace) -> None:
    from google.protobuf import descriptor_pool

    theirs_pool = descriptor_pool.Default()
    files = descriptor_pb2.FileDescriptorSet.FromString(messages.DESCRIPTORS.read_bytes()).file
    checked = 0
    for name in (f.name for f in files if not f.name.startswith("google/")):
        ours_file = messages.POOL.FindFileByName(name)
        for message in _all_messages(ours_file.message_types_by_name.values()):
            theirs = theirs_pool.FindMessageTypeByName(message.full_name)
            proto = descriptor_pb2.DescriptorProto()
            message.CopyToProto(proto)
            reserved = [range(r.start, r.end) for r in proto.reserved_range]
            for field in theirs.fields:
                if field.name not in message.fields_by_name:
                    assert any(field.number in r for r in reserved), (
                        message.full_name,
                        field.name,
                    )
                    continue
                mine = message.fields_by_name[field.name]
                assert (mine.number, mine.type, mine.is_repeated) == (
                    field.number,
                    field.type,
                    field.is_repeated,
                ), (message.full_name, field.name)
                for kind in ("message_type", "enum_type"):
                    a, b = getattr(mine, kind), getattr(field, kind)
                    assert (a and a.full_name) == (b and b.full_name), (message.full_name, kind)
                checked += 1
        for enum in ours_file.enum_types_by_name.values():
            values = {v.name: v.number for v in enum.values}
            expected = {
                v.name: v.number for v in theirs_pool.FindEnumTypeByName(enum.full_name).values
            }
            assert values == expected, enum.full_name
    for service in ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        for method in messages.POOL.FindServiceByName(service).methods:
            twin = theirs_pool.FindServiceByName(service).methods_by_name[method.name]
            assert method.input_type.full_name == twin.input_type.full_name
            assert method.output_type.full_name == twin.output_type.full_name
    assert checked > 50


def _all_messages(descriptors: Any) -> Any:
    for descriptor in descriptors:
        yield descriptor
        yield from _all_messages(descriptor.nested_types)


def test_private_pool_loads_again_beside_tensorflow(tf: types.SimpleNamespace) -> None:
    # As a later `import unet_keras.client` would, with TF Serving's messages registered.
    pool = messages._load_pool(messages.DESCRIPTORS)
    request = tf.predict_pb2.PredictRequest()
    request.model_spec.name = "unet"
    parsed = pool.FindMessageTypeByName("tensorflow.serving.PredictRequest")
    assert parsed.fields_by_name["inputs"].number == 2
    assert (
        messages.PredictRequest.FromString(request.SerializeToString()).model_spec.name == "unet"
    )


def test_missing_descriptor_set_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match=r"missing.*pip install -e"):
        messages._load_pool(tmp_path / "tf_serving.binpb")


# --- wire compatibility ---------------------------------------------------------------


def test_predict_request_and_response_are_wire_compatible(tf: types.SimpleNamespace) -> None:
    inputs = {
        "image": np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3),
        "weights": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
        "ids": np.array([1, -2, 3], np.int64),
        "flags": np.array([True, False]),
        "names": np.array([b"a", "b\u00e9"], object),
        "scale": np.float64(2.5),
    }
    from unet_keras.client import protocol

    request = protocol.predict_request(
        protocol.model_spec("unet", 7, "serving_default"), inputs, ["mask", "probabilities"]
    )
    theirs = wire_twin(request, tf.predict_pb2.PredictRequest)
    assert theirs.model_spec.version.value == 7
    assert list(theirs.output_filter) == ["mask", "probabilities"]
    for name, value in inputs.items():
        expected = value if name != "names" else np.array([b"a", "b\u00e9".encode()], object)
        np.testing.assert_array_equal(tf.tf.make_ndarray(theirs.inputs[name]), expected)
    labelled = protocol.predict_request(protocol.model_spec("unet", "canary"), {})
    assert wire_twin(labelled, tf.predict_pb2.PredictRequest).model_spec.version_label == "canary"

    response = messages.PredictResponse()
    response.model_spec.name = "unet"
    response.model_spec.version.value = 3
    response.outputs["mask"].CopyFrom(make_tensor_proto(np.full((1, 2, 2), 255, np.uint8)))
    response.outputs["probabilities"].CopyFrom(make_tensor_proto(np.ones((1, 2, 2, 1), "f4")))
    theirs = wire_twin(response, tf.predict_pb2.PredictResponse)
    assert tf.tf.make_ndarray(theirs.outputs["mask"]).tolist() == [[[255, 255], [255, 255]]]


def test_metadata_messages_are_wire_compatible(tf: types.SimpleNamespace) -> None:
    from tensorflow.core.protobuf import meta_graph_pb2

    from unet_keras.client import protocol

    request = protocol.metadata_request(protocol.model_spec("unet", None))
    assert list(wire_twin(request, tf.get_model_metadata_pb2.GetModelMetadataRequest)
                .metadata_field) == ["signature_def"]  # fmt: skip

    # Built with TF Serving's classes, as the server does, the map packed in an Any.
    signature_map = tf.get_model_metadata_pb2.SignatureDefMap()
    signature = signature_map.signature_def["serving_default"]
    signature.method_name = "tensorflow/serving/predict"
    image = signature.inputs["image"]
    image.name, image.dtype = "serving_default_image:0", tf.tf.uint8.as_datatype_enum
    image.tensor_shape.CopyFrom(tf.tf.TensorShape([None, None, None, 1]).as_proto())
    sparse = signature.outputs["sparse"]
    sparse.coo_sparse.values_tensor_name = "values:0"
    sparse.dtype = tf.tf.float32.as_datatype_enum
    sparse.tensor_shape.unknown_rank = True
    signature.defaults["scale"].CopyFrom(tf.tf.make_tensor_proto(2.0))
    assert isinstance(signature, meta_graph_pb2.SignatureDef)
    theirs = tf.get_model_metadata_pb2.GetModelMetadataResponse()
    theirs.model_spec.name = "unet"
    theirs.model_spec.version.value = 4
    theirs.metadata["signature_def"].Pack(signature_map)

    ours = messages.GetModelMetadataResponse.FromString(theirs.SerializeToString())
    wire_twin(ours, tf.get_model_metadata_pb2.GetModelMetadataResponse)
    unpacked = messages.SignatureDefMap.FromString(ours.metadata["signature_def"].value)
    assert tree(unpacked) == tree(signature_map, unpacked.DESCRIPTOR)
    assert protocol.signatures(ours) == {
        "model": "unet",
        "version": 4,
        "signatures": {
            "serving_default": {
                "method": "tensorflow/serving/predict",
                "inputs": {"image": {"dtype": "uint8", "shape": [-1, -1, -1, 1]}},
                "outputs": {"sparse": {"dtype": "float32", "shape": None}},
            }
        },
    }


def test_status_messages_are_wire_compatible(tf: types.SimpleNamespace) -> None:
    from unet_keras.client import protocol

    request = messages.GetModelStatusRequest(model_spec=protocol.model_spec("unet", 2))
    wire_twin(request, tf.get_model_status_pb2.GetModelStatusRequest)
    theirs = tf.get_model_status_pb2.GetModelStatusResponse()
    theirs.model_version_status.add(version=2, state=30)
    failed = theirs.model_version_status.add(version=1, state=50)
    failed.status.error_code = 9
    failed.status.error_message = "Could not load: bad graph"
    ours = messages.GetModelStatusResponse.FromString(theirs.SerializeToString())
    wire_twin(ours, tf.get_model_status_pb2.GetModelStatusResponse)
    assert protocol.statuses(ours) == [
        {"version": 2, "state": "AVAILABLE", "error_code": "OK", "error_message": ""},
        {
            "version": 1,
            "state": "END",
            "error_code": "FAILED_PRECONDITION",
            "error_message": "Could not load: bad graph",
        },
    ]


# --- tensors --------------------------------------------------------------------------


def sample(dtype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Values spanning the dtype's range, extremes included."""
    size = int(np.prod(shape))
    if dtype == "bool":
        return (np.arange(size) % 3 == 0).reshape(shape)
    if np.dtype(dtype).kind == "f":
        info = np.finfo(dtype)
        values = np.array([info.min, -1.5, 0.0, 0.25, info.max, info.tiny], dtype)
    else:
        info = np.iinfo(dtype)
        values = np.array([info.min, 0, 1, info.max // 2, info.max, info.min + 1], dtype)
    return np.resize(values, shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3), (), (0, 4), (1, 2, 3, 1)])
def test_tensor_content_round_trips_and_matches_tensorflow(
    tf: types.SimpleNamespace, dtype: str, shape: tuple[int, ...]
) -> None:
    array = sample(dtype, shape)
    proto = make_tensor_proto(array)
    back = make_ndarray(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    theirs = tf.tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    np.testing.assert_array_equal(tf.tf.make_ndarray(theirs), array)
    from_tf = make_ndarray(
        messages.TensorProto.FromString(tf.tf.make_tensor_proto(array).SerializeToString())
    )
    assert from_tf.dtype == array.dtype
    np.testing.assert_array_equal(from_tf, array)


TYPED_FIELDS = {
    "uint8": "int_val",
    "uint16": "int_val",
    "int8": "int_val",
    "int16": "int_val",
    "int32": "int_val",
    "int64": "int64_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "float32": "float_val",
    "float64": "double_val",
    "bool": "bool_val",
}


@pytest.mark.parametrize("dtype", [*TYPED_FIELDS, "float16"])
def test_typed_fields_are_read_like_tensorflow(tf: types.SimpleNamespace, dtype: str) -> None:
    array = sample(dtype)
    proto = messages.TensorProto(dtype=tf.tf.as_dtype(dtype).as_datatype_enum)
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=3)
    if dtype == "float16":
        proto.half_val.extend(array.view(np.uint16).ravel().tolist())
    else:
        getattr(proto, TYPED_FIELDS[dtype]).extend(array.ravel().tolist())
    np.testing.assert_array_equal(make_ndarray(proto), array)
    theirs = tf.tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    np.testing.assert_array_equal(tf.tf.make_ndarray(theirs), array)
    # One value stands for the whole tensor; fewer than all repeat the last.
    del getattr(proto, TYPED_FIELDS.get(dtype, "half_val"))[2:]
    expected = np.resize(array.ravel()[:2], 6)
    expected[2:] = array.ravel()[1]
    np.testing.assert_array_equal(make_ndarray(proto), expected.reshape(2, 3))
    theirs = tf.tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    np.testing.assert_array_equal(tf.tf.make_ndarray(theirs), expected.reshape(2, 3))


def test_strings_scalars_and_broadcasts(tf: types.SimpleNamespace) -> None:
    strings = np.array([["a", "bé"], ["", "d"]])
    proto = make_tensor_proto(strings)
    assert list(proto.string_val) == [b"a", "bé".encode(), b"", b"d"]
    back = make_ndarray(proto)
    assert back.dtype == object and back.tolist() == [[b"a", "bé".encode()], [b"", b"d"]]
    theirs = tf.tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    assert tf.tf.make_ndarray(theirs).tolist() == back.tolist()
    scalar = make_ndarray(make_tensor_proto(b'{"a": 1}'))
    assert scalar.shape == () and scalar[()] == b'{"a": 1}'

    constant = messages.TensorProto(dtype=1, float_val=[0.5])
    constant.tensor_shape.dim.add(size=2)
    constant.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(make_ndarray(constant), np.full((2, 2), 0.5, np.float32))
    empty = messages.TensorProto(dtype=3)
    empty.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(make_ndarray(empty), np.zeros(3, np.int32))
    words = messages.TensorProto(dtype=7, string_val=[b"x"])
    words.tensor_shape.dim.add(size=3)
    assert make_ndarray(words).tolist() == [b"x", b"x", b"x"]


def test_malformed_tensors_name_the_problem() -> None:
    with pytest.raises(TypeError, match="complex64"):
        make_tensor_proto(np.zeros(2, np.complex64))
    with pytest.raises(TypeError, match="DT_COMPLEX64"):
        make_ndarray(messages.TensorProto(dtype=8))
    short = make_tensor_proto(np.zeros((2, 2), np.float32))
    short.tensor_content = short.tensor_content[:-4]
    with pytest.raises(ValueError, match=r"holds 12 bytes.*needs 16"):
        make_ndarray(short)
    many = messages.TensorProto(dtype=3, int_val=[1, 2, 3])
    many.tensor_shape.dim.add(size=2)
    with pytest.raises(ValueError, match="3 values for 2 elements"):
        make_ndarray(many)
    unknown = messages.TensorProto(dtype=1)
    unknown.tensor_shape.unknown_rank = True
    with pytest.raises(ValueError, match="unknown rank"):
        make_ndarray(unknown)


def test_big_endian_arrays_are_sent_little_endian() -> None:
    array = np.arange(6, dtype=">u2").reshape(2, 3)
    proto = make_tensor_proto(array)
    assert proto.tensor_content == array.astype("<u2").tobytes()
    np.testing.assert_array_equal(make_ndarray(proto), array)


# --- calls, retries, errors -------------------------------------------------------------


def test_status_metadata_and_record(client: SegmentationClient, fake: FakeServing) -> None:
    assert client.model_status() == [
        {"version": 3, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}
    ]
    signatures = client.metadata()["signatures"]
    assert signatures["serving_default"]["inputs"] == {
        "image": {"dtype": "uint8", "shape": [-1, -1, -1, 1]}
    }
    assert client.model_record() == model_record()
    assert fake.calls("Predict")[-1].model_spec.signature_name == "metadata"


def test_unavailable_is_retried_until_it_succeeds(client: SegmentationClient, fake: FakeServing):
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, "Socket closed", times=2)
    assert client.model_status()[0]["state"] == "AVAILABLE"
    assert len(fake.calls("GetModelStatus")) == 3


def test_invalid_argument_is_not_retried_and_keeps_the_message(
    client: SegmentationClient, fake: FakeServing
) -> None:
    fake.fail_next(grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be uint8 but float is")
    with pytest.raises(InvalidArgumentError) as raised:
        client.segment(np.zeros((4, 4), np.uint8))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details == "Expects arg[0] to be uint8 but float is"
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
    client: SegmentationClient, fake: FakeServing, code: grpc.StatusCode, error: type
) -> None:
    fake.fail_next(code, "no", times=2)
    with pytest.raises(error) as raised:
        client.model_status()
    assert raised.value.code == code and len(fake.calls("GetModelStatus")) == 1


def test_unknown_model_is_not_found(fake: FakeServing) -> None:
    with (
        SegmentationClient(fake.address, "other", retry=FAST_RETRY) as other,
        pytest.raises(NotFoundError, match="Servable not found"),
    ):
        other.model_record()


def test_resource_exhausted_is_retried_when_asked(fake: FakeServing) -> None:
    retry = RetryPolicy(attempts=3, initial_backoff=0.01, retry_resource_exhausted=True)
    fake.fail_next(grpc.StatusCode.RESOURCE_EXHAUSTED, "Out of memory", times=2)
    with SegmentationClient(fake.address, retry=retry) as patient:
        patient.model_status()
    assert len(fake.calls("GetModelStatus")) == 3


def test_retries_give_up_after_attempts_with_bounded_backoff(fake: FakeServing) -> None:
    retry = RetryPolicy(attempts=4, initial_backoff=0.05, max_backoff=0.08)
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, "down", times=10)
    with SegmentationClient(fake.address, retry=retry) as patient:
        start = time.monotonic()
        with pytest.raises(UnavailableError, match="down"):
            patient.model_status()
        elapsed = time.monotonic() - start
    assert len(fake.calls("GetModelStatus")) == 4
    assert elapsed < 0.05 + 0.08 + 0.08 + 1.0  # the three backoffs at most, plus the calls


def test_retries_stop_at_the_deadline(fake: FakeServing) -> None:
    retry = RetryPolicy(attempts=10_000, initial_backoff=0.02, max_backoff=0.02)
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, "down", times=10_000)
    with SegmentationClient(fake.address, retry=retry, timeout=0.3) as patient:
        start = time.monotonic()
        with pytest.raises(UnavailableError):
            patient.model_status()
    assert time.monotonic() - start < 1.5


def test_backoff_is_full_jitter_under_the_exponential_cap() -> None:
    policy = RetryPolicy(attempts=10, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    random.seed(3)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert 0 <= min(delays) < cap / 4 and 3 * cap / 4 < max(delays) <= cap


def test_slow_calls_raise_deadline_exceeded(client: SegmentationClient, fake: FakeServing):
    fake.delay = 1.0
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError) as raised:
        client.model_status(timeout=0.2)
    assert time.monotonic() - start < 0.9
    assert isinstance(raised.value, TimeoutError) and len(fake.calls("GetModelStatus")) == 1


def test_wait_until_available_polls_through_loading(
    client: SegmentationClient, fake: FakeServing
) -> None:
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


def test_versions_and_labels_reach_the_model_spec(client: SegmentationClient, fake: FakeServing):
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


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="compression"):
        ChannelConfig(compression="brotli")
    with pytest.raises(ValueError, match="both private_key and certificate_chain"):
        ChannelConfig(tls=True, private_key=b"key")
    with pytest.raises(ValueError, match="need tls=True"):
        ChannelConfig(root_certificates=b"pem")
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    options = dict(ChannelConfig(keepalive_time=300, max_send_bytes=1 << 20).options())
    assert options["grpc.keepalive_time_ms"] == 300_000
    assert options["grpc.max_send_message_length"] == 1 << 20
    assert '"round_robin"' in options["grpc.service_config"]


def test_gzip_compression_reaches_the_server(fake: FakeServing) -> None:
    with SegmentationClient(fake.address, channel=ChannelConfig(compression="gzip")) as packed:
        image = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
        np.testing.assert_array_equal(
            packed.segment(image).mask, fake_model(image[None, ..., None], 0, 1)["mask"][0]
        )


@pytest.mark.skipif(not Path("/usr/bin/openssl").exists(), reason="needs openssl")
def test_mutual_tls(tmp_path: Path) -> None:
    pem = _certificates(tmp_path)
    server_credentials = grpc.ssl_server_credentials(
        [(pem["server.key"], pem["server.pem"])],
        root_certificates=pem["ca.pem"],
        require_client_auth=True,
    )
    server = FakeServing().start(server_credentials)
    try:
        channel = ChannelConfig(
            tls=True,
            root_certificates=pem["ca.pem"],
            private_key=pem["client.key"],
            certificate_chain=pem["client.pem"],
        )
        with SegmentationClient(server.address, channel=channel, timeout=5) as secure:
            assert secure.model_status()[0]["state"] == "AVAILABLE"
        anonymous = ChannelConfig(tls=True, root_certificates=pem["ca.pem"])
        once = RetryPolicy(attempts=1)
        with (
            SegmentationClient(server.address, channel=anonymous, retry=once, timeout=5) as bare,
            pytest.raises(UnavailableError),
        ):
            bare.model_status()
    finally:
        server.stop()


def _certificates(folder: Path) -> dict[str, bytes]:
    """A test CA, and server (for localhost) and client certificates it signed."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=test-ca")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={'localhost' if name == 'server' else 'client'}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
                "-extfile", "san.ext")  # fmt: skip
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".pem", ".key")}


# --- segmentation and tiling ------------------------------------------------------------


def test_segment_one_request(client: SegmentationClient, fake: FakeServing) -> None:
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
def test_tiled_segment_equals_one_request(probabilities: bool) -> None:
    # The record says depth 4. A depth-4 valid U-Net's output pixel reaches up to 107
    # pixels (92 + 15, by its place on the pooling grid) and pools on 16-pixel cells; the
    # fake model does the same.
    fake = FakeServing(radius=107, block=16).start()
    limit = 160 * 1024
    tight = ChannelConfig(max_send_bytes=limit, max_receive_bytes=limit * 6)
    image = np.random.default_rng(2).integers(0, 256, (700, 530), dtype=np.uint8)
    try:
        with SegmentationClient(fake.address) as roomy:
            whole = roomy.segment(image, probabilities=probabilities)
        fake.requests.clear()
        with SegmentationClient(fake.address, channel=tight) as tiled_client:
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


def test_too_little_context_or_an_off_grid_tile_shows(fake: FakeServing) -> None:
    fake.radius, fake.block = 40, 16
    image = np.random.default_rng(3).integers(0, 256, (400, 400), dtype=np.uint8)

    def segment(**settings: Any) -> np.ndarray:
        with SegmentationClient(fake.address, **settings) as connected:
            return connected.segment(image).mask

    whole = segment()
    tight = ChannelConfig(max_send_bytes=60_000)
    np.testing.assert_array_equal(segment(channel=tight, context=40, grid=16), whole)
    assert (segment(channel=tight, context=30, grid=16) != whole).any()
    assert (segment(channel=tight, context=40, grid=5) != whole).any()


def test_a_limit_too_small_to_tile_is_explained(fake: FakeServing) -> None:
    channel = ChannelConfig(max_send_bytes=8192)
    with (
        SegmentationClient(fake.address, channel=channel) as tiny,
        pytest.raises(ValueError, match="raise the message size limit"),
    ):
        tiny.segment(np.zeros((300, 300), np.uint8))


def test_segment_many_keeps_order_and_bounds_concurrency(
    client: SegmentationClient, fake: FakeServing
) -> None:
    fake.delay = 0.1
    images = [np.full((10 + i, 12), 20 * i, np.uint8) for i in range(8)]
    results = client.segment_many(images, concurrency=4)
    assert [r.mask.shape for r in results] == [(10 + i, 12) for i in range(8)]
    assert [int(r.mask[0, 0]) for r in results] == [255 if 20 * i > 127 else 0 for i in range(8)]
    assert 2 <= fake.most_in_flight <= 4


def test_async_client(fake: FakeServing) -> None:
    async def run() -> None:
        fake.delay = 0.05
        async with AsyncSegmentationClient(fake.address, retry=FAST_RETRY, timeout=5) as aio:
            assert (await aio.model_status())[0]["version"] == 3
            assert (await aio.metadata())["model"] == "unet"
            assert (await aio.model_record())["model"]["depth"] == 4
            fake.fail_next(grpc.StatusCode.UNAVAILABLE, "restarting", times=2)
            assert await aio.wait_until_available(timeout=5, poll_interval=0.01) == 3
            images = [np.full((8, 9 + i), 40 * i, np.uint8) for i in range(6)]
            results = await aio.segment_many(images, concurrency=3)
            assert [r.mask.shape for r in results] == [(8, 9 + i) for i in range(6)]
            assert [int(r.mask[0, 0]) for r in results] == [255 if 40 * i > 127 else 0
                                                             for i in range(6)]  # fmt: skip
            assert 2 <= fake.most_in_flight <= 3
            fake.fail_next(grpc.StatusCode.INVALID_ARGUMENT, "bad shape")
            with pytest.raises(InvalidArgumentError, match="bad shape"):
                await aio.segment(images[0])
            with pytest.raises(DeadlineExceededError):
                fake.delay = 1.0
                await aio.model_status(timeout=0.1)

    asyncio.run(run())


def test_async_tiling_matches_blocking(fake: FakeServing) -> None:
    fake.radius, fake.block = 20, 16
    image = np.random.default_rng(4).integers(0, 256, (300, 260), dtype=np.uint8)
    whole = SegmentationClient(fake.address).segment(image).mask

    async def tiled() -> np.ndarray:
        channel = ChannelConfig(max_send_bytes=20_000)
        async with AsyncSegmentationClient(fake.address, channel=channel, context=20) as aio:
            return (await aio.segment(image)).mask

    np.testing.assert_array_equal(asyncio.run(tiled()), whole)


# --- command line -----------------------------------------------------------------------


def test_cli_segments_a_folder_and_names_the_failure(
    fake: FakeServing, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "in"
    folder.mkdir()
    images = {"a": rng.integers(0, 256, (30, 20), dtype=np.uint8)}
    images["b"] = rng.integers(0, 256, (25, 35), dtype=np.uint8)
    Image.fromarray(images["a"]).save(folder / "a.png")
    Image.fromarray(images["b"]).save(folder / "b.tif")
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("skipped")
    status = client_cli.main(
        ["segment", str(folder), "-o", str(tmp_path / "out"), "--server", fake.address]
    )
    assert status == 1
    error = capsys.readouterr().err
    assert "broken.png" in error and "a.png" not in error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    for stem, image in images.items():
        written = np.asarray(Image.open(tmp_path / "out" / f"{stem}.png"))
        np.testing.assert_array_equal(written, fake_model(image[None, ..., None], 0, 1)["mask"][0])


def test_cli_status_and_one_line_errors(
    fake: FakeServing, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert client_cli.main(["status", "--server", fake.address]) == 0
    assert '"state": "AVAILABLE"' in capsys.readouterr().out

    with socket.socket() as unused:
        unused.bind(("localhost", 0))
        closed = f"localhost:{unused.getsockname()[1]}"
    assert client_cli.main(["status", "--server", closed, "--timeout", "0.5"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("unet-client: ") and error.count("\n") == 1 and "UNAVAILABLE" in error

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(image)
    arguments = ["segment", str(image), "-o", str(tmp_path / "out"), "--server", fake.address]
    assert client_cli.main([*arguments, "--model", "other"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert client_cli.main([*arguments, "--ca-cert", str(image)]) == 2
    assert "need --tls" in capsys.readouterr().err
    (tmp_path / "a.tif").write_bytes(b"")
    assert client_cli.main(["segment", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "a.png and a.tif would both be written as a.png" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "unet-client"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "segment" in result.stdout and "status" in result.stdout
