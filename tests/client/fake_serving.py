"""An in-process stand-in for TF Serving's gRPC API, for client tests.

`FakeServing` answers PredictionService/Predict and GetModelMetadata and
ModelService/GetModelStatus with the client's own message classes. Its "model" is a
cheap numpy function shaped like a valid-padding U-Net where it matters to tiling: each
output pixel depends on a (2 * radius + 1)-pixel neighbourhood, mirrored at the image's
borders, and on its `block` x `block` cell of a grid anchored at the image's origin, so a
tiled result equals the whole-image one only with enough context and grid-aligned tiles.
Failures and delays can be queued per call.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from unet_keras.client import messages
from unet_keras.client.tensors import make_ndarray, make_tensor_proto
from unet_keras.record import MaskConfig, ModelConfig, ModelRecord, NormalizationConfig

SIGNATURE_DEFS = {
    "serving_default": {
        "inputs": {"image": ("DT_UINT8", [-1, -1, -1, 1])},
        "outputs": {
            "probabilities": ("DT_FLOAT", [-1, -1, -1, 1]),
            "mask": ("DT_UINT8", [-1, -1, -1]),
        },
    },
    "metadata": {"inputs": {}, "outputs": {"metadata": ("DT_STRING", [])}},
}


def model_record(depth: int = 4, classes: int = 1) -> ModelRecord:
    """A model record like the export's `metadata` signature returns."""
    return ModelRecord(
        MaskConfig((0, 255)),
        NormalizationConfig("standardize", (120.0,), (40.0,), "uint8"),
        ModelConfig(depth=depth, classes=classes, padding="valid"),
        (572, 388),
    )


def fake_model(image: np.ndarray, radius: int, block: int) -> dict[str, np.ndarray]:
    """`probabilities` [N, H, W, 1] and `mask` [N, H, W] for uint8 images [N, H, W, 1]."""
    pixels = image[..., 0].astype(np.int64)
    height, width = pixels.shape[1:]
    padded = np.pad(pixels, [(0, 0), (radius, radius), (radius, radius)], mode="reflect")
    # Box sums from a zero-led 2-D prefix sum: exact integers, whatever the tiling.
    prefix = np.pad(padded.cumsum(1).cumsum(2), [(0, 0), (1, 0), (1, 0)])
    side = 2 * radius + 1
    box = (
        prefix[:, side:, side:]
        - prefix[:, :-side, side:]
        - prefix[:, side:, :-side]
        + prefix[:, :-side, :-side]
    ) / side**2
    rows, cols = -(-height // block) * block, -(-width // block) * block
    cells = np.pad(pixels, [(0, 0), (0, rows - height), (0, cols - width)])
    counts = np.pad(np.ones_like(pixels), [(0, 0), (0, rows - height), (0, cols - width)])

    def per_cell(values: np.ndarray) -> np.ndarray:
        sums = values.reshape(-1, rows // block, block, cols // block, block).sum((2, 4))
        return sums.repeat(block, 1).repeat(block, 2)[:, :height, :width]

    probability = ((box + per_cell(cells) / per_cell(counts)) / 510).astype(np.float32)
    return {
        "probabilities": probability[..., np.newaxis],
        "mask": np.where(probability > 0.5, 255, 0).astype(np.uint8),
    }


@dataclass
class FakeServing:
    """The fake server's behaviour and what it saw; `start()` it, then `address`."""

    model_name: str = "unet"
    radius: int = 0
    block: int = 1
    record: ModelRecord = field(default_factory=model_record)
    # Version states GetModelStatus reports, one list per call, the last one repeating;
    # an entry may be a (code, message) pair to fail that call instead.
    statuses: list[Any] = field(default_factory=lambda: [[(3, "AVAILABLE")]])
    failures: deque = field(default_factory=deque)
    delay: float = 0.0
    max_receive_bytes: int = 64 * 1024 * 1024
    requests: list[tuple[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    # A hostile server: makes the response to each segmentation request.
    answer: Any = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._status_calls = 0
        self._server: grpc.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        """HOST:PORT to connect to."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeServing:
        """Serves plaintext on a free port of 127.0.0.1."""
        options = [
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            ("grpc.max_send_message_length", self.max_receive_bytes),
        ]
        server = grpc.server(ThreadPoolExecutor(16), options=options)
        server.add_generic_rpc_handlers(
            [
                _handlers(
                    "tensorflow.serving.PredictionService",
                    {
                        "Predict": (messages.PREDICT, self._predict),
                        "GetModelMetadata": (messages.GET_MODEL_METADATA, self._metadata),
                    },
                ),
                _handlers(
                    "tensorflow.serving.ModelService",
                    {"GetModelStatus": (messages.GET_MODEL_STATUS, self._status)},
                ),
            ]
        )
        # Not "localhost": gRPC binds its port on ::1 first and keeps going when 127.0.0.1's
        # is taken, so a client that resolves localhost to 127.0.0.1 only (as Python does
        # here) was refused now and then.
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stops at once, cancelling calls in flight."""
        if self._server is not None:
            self._server.stop(None)

    def fail_next(self, code: grpc.StatusCode, message: str, times: int = 1) -> None:
        """Makes the next `times` calls fail with `code` and `message`."""
        self.failures.extend([(code, message)] * times)

    def calls(self, method: str) -> list[Any]:
        """The requests received by `method` (e.g. "Predict"), failed ones included."""
        return [request for name, request in self.requests if name == method]

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        """Records the call, applies the delay, and fails it if a failure is queued."""
        with self._lock:
            self.requests.append((method, request))
            failure = self.failures.popleft() if self.failures else None
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
        finally:
            with self._lock:
                self.in_flight -= 1
        if failure is not None:
            context.abort(*failure)
        if request.model_spec.name != self.model_name:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Latest({request.model_spec.name})",
            )

    def _predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("Predict", request, context)
        response = messages.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        if request.model_spec.signature_name == "metadata":
            record = json.dumps(self.record.to_dict()).encode()
            results = {"metadata": np.array(record, object)}
        elif self.answer is not None:
            return self.answer(request)
        elif request.model_spec.signature_name in ("", "serving_default"):
            image = make_ndarray(request.inputs["image"]) if "image" in request.inputs else None
            if image is None or image.dtype != np.uint8 or image.ndim != 4:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "Expects arg[0] to be uint8 [N, H, W, 1], the input 'image'",
                )
            results = fake_model(image, self.radius, self.block)
        else:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Serving signature name: "{request.model_spec.signature_name}" not found',
            )
        wanted = request.output_filter or results
        for name in wanted:
            response.outputs[name].CopyFrom(make_tensor_proto(results[name]))
        return response

    def _metadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("GetModelMetadata", request, context)
        signatures = messages.SignatureDefMap()
        dtypes = messages.enum_values("tensorflow.DataType")
        for name, spec in SIGNATURE_DEFS.items():
            signature = signatures.signature_def[name]
            signature.method_name = "tensorflow/serving/predict"
            for direction in ("inputs", "outputs"):
                for alias, (dtype, shape) in spec[direction].items():
                    info = getattr(signature, direction)[alias]
                    info.name = f"{name}_{alias}:0"
                    info.dtype = dtypes[dtype]
                    info.tensor_shape.dim.extend(info.tensor_shape.Dim(size=n) for n in shape)
        response = messages.GetModelMetadataResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = 3
        packed = response.metadata["signature_def"]
        packed.type_url = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
        packed.value = signatures.SerializeToString()
        return response

    def _status(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._enter("GetModelStatus", request, context)
        with self._lock:
            step = self.statuses[min(self._status_calls, len(self.statuses) - 1)]
            self._status_calls += 1
        if isinstance(step, tuple):
            context.abort(*step)
        response = messages.GetModelStatusResponse()
        states = messages.ModelVersionStatus.DESCRIPTOR.enum_types_by_name["State"]
        for version, state in step:
            status = response.model_version_status.add(version=version)
            status.state = states.values_by_name[state].number
        return response


def _handlers(service: str, methods: dict[str, tuple[messages.Method, Any]]) -> Any:
    """A generic handler for `service`'s unary methods, with the client's message classes."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=method.request.FromString,
            response_serializer=method.response.SerializeToString,
        )
        for name, (method, behaviour) in methods.items()
    }
    return grpc.method_handlers_generic_handler(service, handlers)
