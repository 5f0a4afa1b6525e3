"""unet_keras.server.requests: a request is checked, and refused by name, before any work."""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from unet_keras.server import requests
from unet_keras.server.status import StatusError

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def signature() -> meta_graph_pb2.SignatureDef:
    """image: uint8 [-1, -1, -1, 1] -> mask, probabilities."""
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in (-1, -1, -1, 1)]
    )
    image = meta_graph_pb2.TensorInfo(name="image:0", dtype=types_pb2.DT_UINT8, tensor_shape=shape)
    outputs = {name: meta_graph_pb2.TensorInfo(name=f"{name}:0") for name in ("mask", "probs")}
    return meta_graph_pb2.SignatureDef(inputs={"image": image}, outputs=outputs)


def request(**inputs: object) -> predict_pb2.PredictRequest:
    made = predict_pb2.PredictRequest()
    for name, value in inputs.items():
        proto = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        made.inputs[name].CopyFrom(proto)
    return made


def refused(call, *args) -> str:
    with pytest.raises(StatusError) as raised:
        call(*args)
    assert raised.value.code == INVALID
    return raised.value.message


def test_a_good_request_becomes_feeds():
    image = np.zeros((1, 5, 6, 1), np.uint8)
    inputs = requests.request_inputs(signature(), request(image=image))
    feeds = requests.feeds(signature(), inputs)
    assert feeds["image"].dtype == tf.uint8 and feeds["image"].shape == (1, 5, 6, 1)


def test_a_tiny_request_claiming_a_huge_tensor_is_refused_before_decoding():
    claim = tf.make_tensor_proto(np.zeros(1, np.uint8))
    claim.tensor_shape.Clear()
    for size in (1, 20000, 20000, 1):
        claim.tensor_shape.dim.add(size=size)
    message = refused(requests.request_inputs, signature(), request(image=claim))
    assert "holds 400000000 values but the request carries 1" in message
    assert claim.ByteSize() < 100


def test_wrong_inputs_are_named():
    image = np.zeros((1, 2, 2, 1), np.uint8)
    message = refused(requests.request_inputs, signature(), request(image=image, x=image))
    assert message.startswith("input size does not match signature: 2!=1")
    inputs = requests.request_inputs(signature(), request(image=image.astype(np.float32)))
    assert refused(requests.feeds, signature(), inputs) == (
        "Expects arg[0] to be uint8 but float is provided"
    )
    inputs = requests.request_inputs(signature(), request(image=np.zeros((2, 2), np.uint8)))
    assert "does not match the signature's" in refused(requests.feeds, signature(), inputs)


def test_output_filters_and_metadata_fields_are_checked():
    assert sorted(requests.output_aliases(signature(), [])) == ["mask", "probs"]
    assert requests.output_aliases(signature(), ["probs"]) == ["probs"]
    assert "duplicate output tensor alias: mask" in refused(
        requests.output_aliases, signature(), ["mask", "mask"]
    )
    assert "not found in signature: nope" in refused(
        requests.output_aliases, signature(), ["nope"]
    )
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    assert refused(requests.check_metadata_request, metadata) == "Missing ModelSpec"
    metadata.model_spec.name = "unet"
    requests.check_metadata_request(metadata)
    metadata.metadata_field.append("everything")
    assert "everything is not supported" in refused(requests.check_metadata_request, metadata)


def test_more_images_than_the_request_batch_limit_are_refused_before_decoding():
    images = np.zeros((65, 1, 1, 1), np.uint8)
    message = refused(requests.request_inputs, signature(), request(image=images), 64)
    assert message.startswith("input image: 65 images along the first dimension, more than")
    assert "--max-request-batch" in message
    accepted = requests.request_inputs(signature(), request(image=images[:64]), 64)
    assert accepted["image"][1].shape == (64, 1, 1, 1)


def test_a_vector_input_is_no_batch_of_images_and_is_not_counted():
    vector = meta_graph_pb2.TensorInfo(
        name="x:0",
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1)]
        ),
    )
    values = meta_graph_pb2.SignatureDef(inputs={"x": vector}, outputs={"y": vector})
    accepted = requests.request_inputs(values, request(x=np.zeros(1000, np.float32)), 64)
    assert accepted["x"][1].shape == (1000,)
    pngs = meta_graph_pb2.TensorInfo(
        name="png:0", dtype=types_pb2.DT_STRING, tensor_shape=vector.tensor_shape
    )
    assert requests.holds_images(pngs) and not requests.holds_images(vector)
