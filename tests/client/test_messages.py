"""The client's own TF Serving messages: cheap to import, apart from TensorFlow's, and
wire-compatible with tensorflow-serving-api's."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from unet_keras.client import make_tensor_proto, messages, protocol


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


def test_importing_the_client_loads_no_tensorflow() -> None:
    # What it loads is the cause of a slow import; its time is bench/grpc_latency.py's.
    code = (
        "import sys; import unet_keras.client; print(sorted({m.split('.')[0] for m in "
        "sys.modules} & {'tensorflow', 'tensorflow_serving', 'keras', 'numpy.f2py'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"importing unet_keras.client loaded {out.stdout}"


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


def test_predict_request_and_response_are_wire_compatible(tf: types.SimpleNamespace) -> None:
    inputs = {
        "image": np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3),
        "weights": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
        "ids": np.array([1, -2, 3], np.int64),
        "flags": np.array([True, False]),
        "names": np.array([b"a", "b\u00e9"], object),
        "scale": np.float64(2.5),
    }

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
