"""TF Serving's protobuf messages and gRPC methods, from a private descriptor pool.

The definitions are this package's own copies (`protos/`), compiled at build time into
`tf_serving.binpb`. They use TF Serving's proto package and message names, which the
`tensorflow` and `tensorflow_serving` packages register in protobuf's default pool;
registering them there too would fail with duplicate-symbol errors in any process that
imports both. A private pool keeps them apart, and the wire format is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTORS = Path(__file__).with_name("tf_serving.binpb")


def _load_pool(path: Path) -> descriptor_pool.DescriptorPool:
    """A fresh descriptor pool holding every file of the FileDescriptorSet at `path`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImportError(
            f"{path} is missing: it is compiled from unet_keras/client/protos when the "
            "package is built; reinstall it (pip install -e . in a checkout)"
        ) from None
    pool = descriptor_pool.DescriptorPool()
    # protoc's --include_imports writes dependencies before their dependants.
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    return pool


POOL = _load_pool(DESCRIPTORS)


def message_class(full_name: str) -> type[Any]:
    """The message class of `full_name` (e.g. "tensorflow.TensorProto") in the private pool."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


def enum_values(full_name: str) -> dict[str, int]:
    """An enum's values by name, e.g. enum_values("tensorflow.DataType")["DT_FLOAT"] == 1."""
    return {v.name: v.number for v in POOL.FindEnumTypeByName(full_name).values}


TensorProto = message_class("tensorflow.TensorProto")
TensorShapeProto = message_class("tensorflow.TensorShapeProto")
SignatureDef = message_class("tensorflow.SignatureDef")
ModelSpec = message_class("tensorflow.serving.ModelSpec")
PredictRequest = message_class("tensorflow.serving.PredictRequest")
PredictResponse = message_class("tensorflow.serving.PredictResponse")
GetModelMetadataRequest = message_class("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponse = message_class("tensorflow.serving.GetModelMetadataResponse")
SignatureDefMap = message_class("tensorflow.serving.SignatureDefMap")
GetModelStatusRequest = message_class("tensorflow.serving.GetModelStatusRequest")
GetModelStatusResponse = message_class("tensorflow.serving.GetModelStatusResponse")
ModelVersionStatus = message_class("tensorflow.serving.ModelVersionStatus")


@dataclass(frozen=True)
class Method:
    """One unary gRPC method: its path and its request and response classes."""

    path: str
    request: type[Any]
    response: type[Any]


def _method(service: str, name: str) -> Method:
    descriptor = POOL.FindServiceByName(service).FindMethodByName(name)
    return Method(
        f"/{service}/{name}",
        message_factory.GetMessageClass(descriptor.input_type),
        message_factory.GetMessageClass(descriptor.output_type),
    )


PREDICT = _method("tensorflow.serving.PredictionService", "Predict")
GET_MODEL_METADATA = _method("tensorflow.serving.PredictionService", "GetModelMetadata")
GET_MODEL_STATUS = _method("tensorflow.serving.ModelService", "GetModelStatus")
