"""TensorFlow Serving's gRPC behaviour for one model's SavedModel versions, in Python.

`unet_keras.serving.server` runs this as `unet-keras serve`: PredictionService.Predict and
GetModelMetadata and ModelService.GetModelStatus, on tensorflow-serving-api's protos, with
TF Serving's status codes and message texts. Sources followed (github.com/tensorflow/serving):

- servables/tensorflow/predict_util.cc: signature lookup, input count, output filter, and
  outputs in the typed value fields (`AsProtoField`, the default; tensor_content only with
  --enable_serialization_as_tensor_content); tensorflow/cc/saved_model/util.cc
  (`GetInputValues`): missing, unparsable and unknown inputs.
- servables/tensorflow/get_model_metadata_impl.cc, model_servers/get_model_status_impl.cc.
- model_servers/server_core.cc and core/manager.h: model spec to servable request, version
  labels, "Servable not found for request: Latest(NAME)".
- sources/storage_path/file_system_storage_path_source.cc and
  core/availability_preserving_policy.cc: numeric version directories, the latest one
  aspired, a new version loaded before the old one unloads, a failed one never retried
  while its directory stays.
- model_servers/grpc_status_util.cc: messages cut at 1024 characters.

Deviations: a request whose deadline passes while the graph runs finishes on the server
(TF Serving cancels the session run; the client gets DEADLINE_EXCEEDED either way); an
input whose shape contradicts the signature is refused with INVALID_ARGUMENT before running
(TF Serving feeds it and lets the graph fail or not); with several inputs, the i of a
wrong dtype's "Expects arg[i]" counts them in alias order (TF Serving: its feed order); a
request whose input shapes hold more values than a message of --max-message-bytes can carry
is refused with INVALID_ARGUMENT before decoding (TF Serving allocates them, filling in the
values a tensor leaves out, and fails only where the allocation does); a failed load is not
retried (TF Serving retries 5 times, a minute apart, reporting LOADING meanwhile); version
labels are not configurable, so every label is unrecognized.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError, Message
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"
SERVE_TAG = "serve"
_MESSAGE_LIMIT = 1024
_VERSION_NAME = re.compile(r"[0-9]+")
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
State = get_model_status_pb2.ModelVersionStatus.State
# Tensor::AsProtoField: the repeated field that carries each dtype's values.
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
}
# Values stored as their bit patterns (half_val) or as (real, imaginary) pairs.
_VALUE_VIEWS = {
    types_pb2.DT_HALF: np.uint16,
    types_pb2.DT_BFLOAT16: np.uint16,
    types_pb2.DT_COMPLEX64: np.float32,
    types_pb2.DT_COMPLEX128: np.float64,
}
# What the eager runtime wraps around a graph error's own text.
_TF_MESSAGE_NOISE = re.compile(
    r"^Graph execution error:\s*(Detected at node \S+ defined at \(most recent call last\):\n"
    r"<stack traces unavailable>\n)?|\s*\[Op:[^\]]*\]$"
)

log = logging.getLogger(__name__)


class ServingError(Exception):
    """A failed request or load, with the gRPC status code TF Serving gives it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def from_tf(cls, error: tf.errors.OpError) -> ServingError:
        """The error a graph raised, with its code and its own message."""
        return cls(_GRPC_CODES[error.error_code], _TF_MESSAGE_NOISE.sub("", error.message))

    def status(self) -> status_pb2.StatusProto:
        """As a StatusProto (GetModelStatus' per-version status)."""
        return status_pb2.StatusProto(error_code=self.code.value[0], error_message=self.message)


def type_name(dtype: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT -> 'float'."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def read_meta_graph(path: Path) -> meta_graph_pb2.MetaGraphDef:
    """The 'serve' MetaGraphDef of a SavedModel, with TF's loader errors when it has none."""
    file = path / "saved_model.pb"
    if not file.is_file():
        raise ServingError(
            grpc.StatusCode.NOT_FOUND,
            "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
            f"{path}. Check that the directory exists and that you have the right "
            "permissions for accessing it.",
        )
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(file.read_bytes())
    except DecodeError:
        raise ServingError(
            grpc.StatusCode.DATA_LOSS, f"Can't parse {file} as binary proto"
        ) from None
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == {SERVE_TAG}:
            return meta_graph
    raise ServingError(
        grpc.StatusCode.NOT_FOUND,
        f"Could not find meta graph def matching supplied tags: {{ {SERVE_TAG} }}. To inspect "
        "available tag-sets in the SavedModel, please use the SavedModel CLI: "
        "`saved_model_cli`",
    )


class Servable:
    """One loaded SavedModel version, counting the requests that use it."""

    def __init__(self, version: int, path: Path) -> None:
        self.version = version
        self.signature_defs = dict(read_meta_graph(path).signature_def)
        self._loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        self._users = 0
        self._idle = threading.Condition()

    def signature(
        self, name: str
    ) -> tuple[meta_graph_pb2.SignatureDef, Callable[..., dict[str, tf.Tensor]]]:
        """A signature and its function; FAILED_PRECONDITION when the model has no such one."""
        # A MetaGraphDef entry without a function (__saved_model_init_op) is no signature.
        if name not in self.signature_defs or name not in self._loaded.signatures:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.'
            )
        return self.signature_defs[name], self._loaded.signatures[name]

    def acquire(self) -> None:
        """Counts one more request in flight."""
        with self._idle:
            self._users += 1

    def release(self) -> None:
        """Counts a request done."""
        with self._idle:
            self._users -= 1
            self._idle.notify_all()

    def wait_idle(self) -> None:
        """Blocks until no request uses this version."""
        with self._idle:
            self._idle.wait_for(lambda: self._users == 0)


def servable_request(spec: model_pb2.ModelSpec) -> tuple[str, int | None]:
    """(name, version or None for the latest) as ServerCore reads a ModelSpec."""
    if not spec.name:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        # No labels are configured: every label is unknown, as in TF Serving without any.
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Unrecognized servable version label: {spec.version_label}",
        )
    return spec.name, spec.version.value if choice == "version" else None


class ModelManager:
    """One model's versions under a base path, loaded and unloaded as TF Serving does.

    The latest numeric version directory is the aspired one; it is loaded while the
    previous one keeps serving, which is unloaded once the new one is available and its
    in-flight requests are done. A version that fails to load is never served.
    """

    def __init__(self, name: str, base_path: str | Path) -> None:
        self.name = name
        self.base_path = Path(base_path)
        self._lock = threading.Lock()
        self._serving: dict[int, Servable] = {}
        self._states: dict[int, get_model_status_pb2.ModelVersionStatus] = {}
        self._failed: dict[int, ServingError] = {}
        self._listing_error = ""

    def poll(self) -> None:
        """One look at the base path: loads the latest version, unloads superseded ones."""
        on_disk = self._versions_on_disk()
        if on_disk is None:
            return
        # A failed version is tried again only after its directory went away and came back.
        self._failed = {v: e for v, e in self._failed.items() if v in on_disk}
        aspired = max(on_disk, default=None)
        if aspired is not None and aspired not in self._serving and aspired not in self._failed:
            self._load(aspired, on_disk[aspired])
        superseded = sorted(v for v in self._serving if v != aspired)
        if aspired is not None and aspired not in self._serving:
            superseded = superseded[:-1]  # keep the newest one serving until then
        for version in superseded:
            self._unload(version)

    def start(self, poll_seconds: float, stop: threading.Event) -> bool:
        """Polls until a version serves (True) or `stop` is set (False).

        Raises ServingError, as TF Serving fails to start, when the latest version fails.
        """
        while not stop.is_set():
            self.poll()
            if self._serving:
                return True
            if self._failed:
                version, error = max(self._failed.items())
                raise ServingError(
                    grpc.StatusCode.UNKNOWN,
                    f"1 model(s) did not become available: {{{{name: {self.name} version: "
                    f"{version}}} due to error: {error.code.name}: {error.message}}}, }}",
                )
            stop.wait(poll_seconds)
        return False

    def poll_until(self, poll_seconds: float, stop: threading.Event) -> None:
        """Polls every `poll_seconds` until `stop` is set."""
        while not stop.wait(poll_seconds):
            self.poll()

    @contextmanager
    def servable(self, spec: model_pb2.ModelSpec) -> Iterator[Servable]:
        """The version a request asks for, kept loaded until the request is done."""
        name, version = servable_request(spec)
        with self._lock:
            if name == self.name and self._serving:
                servable = self._serving.get(max(self._serving) if version is None else version)
            else:
                servable = None
            if servable is None:
                wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}"
                )
            servable.acquire()
        try:
            yield servable
        finally:
            servable.release()

    def status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        """The states of the versions GetModelStatus asks for, newest first."""
        with self._lock:
            states = dict(self._states) if spec.name == self.name else {}
        if spec.HasField("version"):
            version = spec.version.value
            if version not in states:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {version} of model {spec.name}",
                )
            states = {version: states[version]}
        elif not states:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}"
            )
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(states, reverse=True):
            response.model_version_status.append(states[version])
        return response

    def _versions_on_disk(self) -> dict[int, Path] | None:
        """Numeric version directories by number; None when the base path is unreadable."""
        try:
            children = sorted(self.base_path.iterdir())
        except OSError as error:
            message = f"Could not find base path {self.base_path} for servable {self.name}: "
            self._log_listing_error(message + str(error))
            return None
        versions = {int(p.name): p for p in children if _VERSION_NAME.fullmatch(p.name)}
        if not versions:
            self._log_listing_error(
                f"No versions of servable {self.name} found under base path {self.base_path}."
                " Did you forget to name your leaf directory as a number (eg. '/1/')?"
            )
        else:
            self._listing_error = ""
        return versions

    def _log_listing_error(self, message: str) -> None:
        """Logs a listing problem once, not at every poll."""
        if message != self._listing_error:
            log.warning(message)
            self._listing_error = message

    def _load(self, version: int, path: Path) -> None:
        self._set_state(version, State.START)
        self._set_state(version, State.LOADING)
        log.info("Loading servable version {name: %s version: %d}", self.name, version)
        try:
            servable = Servable(version, path)
        except ServingError as error:
            self._fail(version, error)
        except tf.errors.OpError as error:
            self._fail(version, ServingError.from_tf(error))
        # Whatever else a broken SavedModel raises must not stop the server.
        except Exception as error:
            self._fail(version, ServingError(grpc.StatusCode.UNKNOWN, f"{error!r}"))
        else:
            with self._lock:
                self._serving[version] = servable
            self._set_state(version, State.AVAILABLE)
            log.info(
                "Successfully loaded servable version {name: %s version: %d}", self.name, version
            )

    def _fail(self, version: int, error: ServingError) -> None:
        log.error(
            "Loading servable version {name: %s version: %d} failed: %s: %s",
            self.name,
            version,
            error.code.name,
            error.message,
        )
        self._failed[version] = error
        self._set_state(version, State.END, error)

    def _unload(self, version: int) -> None:
        with self._lock:
            servable = self._serving.pop(version)
        self._set_state(version, State.UNLOADING)
        servable.wait_idle()
        self._set_state(version, State.END)
        log.info("Unloaded servable version {name: %s version: %d}", self.name, version)

    def _set_state(self, version: int, state: int, error: ServingError | None = None) -> None:
        record = get_model_status_pb2.ModelVersionStatus(version=version, state=state)
        # Always present, with error_code OK when healthy, as ToStatusProto writes it.
        record.status.CopyFrom(status_pb2.StatusProto() if error is None else error.status())
        with self._lock:
            self._states[version] = record


def _check_input_count(signature: meta_graph_pb2.SignatureDef, sent: set[str]) -> None:
    """predict_util.cc's VerifyRequestInputsSize."""
    expected = set(signature.inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{_join(sent)}}}) != len({{{_join(expected)}}}). Sent extra: "
            f"{{{_join(sent - expected)}}}. Missing but required: {{{_join(expected - sent)}}}.",
        )


def _check_value_count(request: predict_pb2.PredictRequest, max_message_bytes: int) -> None:
    """Refuses shapes a request cannot carry in full: each value takes at least one byte.

    A tensor may carry fewer values than its shape holds, and decoding fills in the rest,
    so without this a request of a few bytes could claim all the server's memory.
    """
    values = 0
    for alias, proto in sorted(request.inputs.items()):
        # Negative sizes are left to the parser, which refuses them.
        values += math.prod(max(dim.size, 0) for dim in proto.tensor_shape.dim)
        if values > max_message_bytes:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {alias}: shape {[dim.size for dim in proto.tensor_shape.dim]} brings "
                f"the request to {values} values, more than a request of at most "
                f"{max_message_bytes} bytes can carry",
            )


def _request_inputs(
    signature: meta_graph_pb2.SignatureDef,
    request: predict_pb2.PredictRequest,
    max_message_bytes: int,
) -> dict[str, tuple[int, np.ndarray]]:
    """Alias -> (dtype, values) of every signature input, as GetInputValues reads them."""
    sent = set(request.inputs)
    _check_input_count(signature, sent)
    _check_value_count(request, max_message_bytes)
    inputs = {}
    for alias in sorted(signature.inputs):
        if alias in request.inputs:
            proto = request.inputs[alias]
        elif alias in signature.defaults:
            proto = signature.defaults[alias]
        else:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not "
                f"found in request and no default value provided. Inputs expected to be in the "
                f"request {{{_join(sent)}}}, or default input alias set: "
                f"{_join(signature.defaults)}",
            )
        try:
            inputs[alias] = (proto.dtype, tf.make_ndarray(proto))
        # MemoryError too: TF Serving answers a tensor it cannot allocate as unparsable.
        except (ValueError, TypeError, MemoryError):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}"
            ) from None
    if sent - inputs.keys():
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Inputs contains invalid name. Used request inputs: {_join(sent & inputs.keys())}, "
            f"request input: {_join(sent)}",
        )
    return inputs


def _feeds(
    signature: meta_graph_pb2.SignatureDef, inputs: dict[str, tuple[int, np.ndarray]]
) -> dict[str, tf.Tensor]:
    """The inputs as tensors, refused where their dtype or shape contradicts the signature."""
    tensors = {}
    for index, (alias, (dtype, array)) in enumerate(inputs.items()):
        info = signature.inputs[alias]
        if dtype != info.dtype:
            # The session's check; `index`: the input's place in alias order.
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{index}] to be {type_name(info.dtype)} but {type_name(dtype)} "
                "is provided",
            )
        shape = tf.TensorShape(info.tensor_shape)
        if not shape.is_compatible_with(array.shape):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {alias}: shape {list(array.shape)} does not match the signature's {shape}",
            )
        tensors[alias] = tf.constant(array, tf.as_dtype(info.dtype))
    return tensors


def _output_aliases(signature: meta_graph_pb2.SignatureDef, output_filter: list[str]) -> list[str]:
    """The outputs to return: the filter's, checked, else all of the signature's."""
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{_join(signature.outputs)}}}.",
            )
        if alias in seen:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}"
            )
        seen.append(alias)
    return seen or list(signature.outputs)


def as_proto_field(tensor: tf.Tensor) -> tensor_pb2.TensorProto:
    """A tensor as Tensor::AsProtoField writes it: values in the dtype's typed field."""
    dtype = tensor.dtype.as_datatype_enum
    if dtype not in _VALUE_FIELDS:
        return tf.make_tensor_proto(tensor)
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor.shape.as_proto())
    # Strings as objects: a scalar comes back as bytes, and NumPy's bytes dtype drops NULs.
    values = np.asarray(tensor.numpy(), object if dtype == types_pb2.DT_STRING else None).ravel()
    if dtype in _VALUE_VIEWS:
        values = values.view(_VALUE_VIEWS[dtype])
    getattr(proto, _VALUE_FIELDS[dtype]).extend(values.tolist())
    return proto


def predict(
    servable: Servable, request: predict_pb2.PredictRequest, max_message_bytes: int
) -> predict_pb2.PredictResponse:
    """Runs a Predict request on a version, as predict_util.cc's RunPredict does.

    `max_message_bytes`: the server's request size limit, which bounds the values decoded.
    """
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature, function = servable.signature(name)
    inputs = _request_inputs(signature, request, max_message_bytes)
    aliases = _output_aliases(signature, list(request.output_filter))
    feeds = _feeds(signature, inputs)
    try:
        outputs = function(**feeds)
    except tf.errors.OpError as error:
        raise ServingError.from_tf(error) from None
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.signature_name = name
    response.model_spec.version.value = servable.version
    for alias in aliases:
        response.outputs[alias].CopyFrom(as_proto_field(outputs[alias]))
    return response


def model_metadata(
    servable: Servable, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadata's answer: every signature of the version's MetaGraphDef."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signatures.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = servable.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
    return response


def check_metadata_request(request: get_model_metadata_pb2.GetModelMetadataRequest) -> None:
    """get_model_metadata_impl.cc's checks: a model spec and only 'signature_def'."""
    _require_model_spec(request)
    if not request.metadata_field:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "GetModelMetadataRequest must specify at least one metadata_field",
        )
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported"
            )


def _require_model_spec(request: Message) -> None:
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def _join(names: Iterable[str]) -> str:
    return ",".join(sorted(names))


def _abort(context: grpc.ServicerContext, error: ServingError) -> None:
    """Ends the call with the error, its message cut as TF Serving's ToGRPCStatus cuts it."""
    message = error.message
    if len(message) > _MESSAGE_LIMIT:
        message = message[:_MESSAGE_LIMIT] + "...TRUNCATED"
    context.abort(error.code, message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService: Predict and GetModelMetadata (the rest stays UNIMPLEMENTED)."""

    def __init__(self, manager: ModelManager, max_message_bytes: int) -> None:
        self._manager = manager
        self._max_message_bytes = max_message_bytes

    def Predict(  # noqa: N802 (the gRPC method's name)
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        """Runs a signature of the model on the request's inputs."""
        try:
            _require_model_spec(request)
            remaining = context.time_remaining()
            # Work for a caller that has already given up is wasted.
            if remaining is not None and remaining <= 0:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            with self._manager.servable(request.model_spec) as servable:
                return predict(servable, request, self._max_message_bytes)
        except ServingError as error:
            _abort(context, error)

    def GetModelMetadata(  # noqa: N802
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """The signatures of a model version."""
        try:
            check_metadata_request(request)
            with self._manager.servable(request.model_spec) as servable:
                return model_metadata(servable, request)
        except ServingError as error:
            _abort(context, error)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService: GetModelStatus (HandleReloadConfigRequest stays UNIMPLEMENTED)."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    def GetModelStatus(  # noqa: N802
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """The state of each version of a model, or of the one asked for."""
        try:
            _require_model_spec(request)
            return self._manager.status(request.model_spec)
        except ServingError as error:
            _abort(context, error)


def build_server(
    manager: ModelManager,
    address: str,
    *,
    threads: int,
    max_message_bytes: int,
    tls: tuple[bytes, bytes] | None = None,
) -> tuple[grpc.Server, int]:
    """A gRPC server for `manager` bound to `address`, not started, and its port.

    `tls`: (private key, certificate chain) in PEM. OSError when it cannot listen.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # A port another server holds must fail here, not be silently shared.
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, max_message_bytes), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
    except RuntimeError as error:
        raise OSError(f"cannot listen on {address}: {error}") from None
    if port == 0:
        raise OSError(f"cannot listen on {address}: in use or not an address of this machine")
    return server, port
