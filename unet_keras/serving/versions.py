"""One model's numbered SavedModel versions, loaded and unloaded as TensorFlow Serving does.

Sources followed (github.com/tensorflow/serving): model_servers/server_core.cc and
core/manager.h (model spec to servable request, version labels, "Servable not found for
request: Latest(NAME)"); sources/storage_path/file_system_storage_path_source.cc and
core/availability_preserving_policy.cc (numeric version directories, the latest one
aspired, a new version loaded before the old one unloads, a failed one never retried while
its directory stays); model_servers/get_model_status_impl.cc.

Deviations: a failed load is not retried (TF Serving retries 5 times, a minute apart,
reporting LOADING meanwhile); version labels are not configurable, so every label is
unrecognized.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_pb2, status_pb2

from unet_keras import contract
from unet_keras.serving.status import StatusError

State = get_model_status_pb2.ModelVersionStatus.State

log = logging.getLogger(__name__)


def read_meta_graph(path: Path) -> meta_graph_pb2.MetaGraphDef:
    """The 'serve' MetaGraphDef of a SavedModel, with TF's loader errors when it has none."""
    file = path / "saved_model.pb"
    if not file.is_file():
        raise StatusError(
            grpc.StatusCode.NOT_FOUND,
            "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
            f"{path}. Check that the directory exists and that you have the right "
            "permissions for accessing it.",
        )
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(file.read_bytes())
    except DecodeError:
        raise StatusError(
            grpc.StatusCode.DATA_LOSS, f"Can't parse {file} as binary proto"
        ) from None
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == {contract.SERVE_TAG}:
            return meta_graph
    raise StatusError(
        grpc.StatusCode.NOT_FOUND,
        "Could not find meta graph def matching supplied tags: "
        f"{{ {contract.SERVE_TAG} }}. To inspect available tag-sets in the SavedModel, "
        "please use the SavedModel CLI: `saved_model_cli`",
    )


class Servable:
    """One loaded SavedModel version, counting the requests that use it."""

    def __init__(self, version: int, path: Path) -> None:
        self.version = version
        self.signature_defs = dict(read_meta_graph(path).signature_def)
        self._loaded = tf.saved_model.load(str(path), tags=[contract.SERVE_TAG])
        self._users = 0
        self._idle = threading.Condition()

    def signature(
        self, name: str
    ) -> tuple[meta_graph_pb2.SignatureDef, Callable[..., dict[str, tf.Tensor]]]:
        """A signature and its function; FAILED_PRECONDITION when the model has no such one."""
        # A MetaGraphDef entry without a function (__saved_model_init_op) is no signature.
        if name not in self.signature_defs or name not in self._loaded.signatures:
            raise StatusError(
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
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        # No labels are configured: every label is unknown, as in TF Serving without any.
        raise StatusError(
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
        self._in_flight = 0
        self._states: dict[int, get_model_status_pb2.ModelVersionStatus] = {}
        self._failed: dict[int, StatusError] = {}
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

        Raises StatusError, as TF Serving fails to start, when the latest version fails.
        """
        while not stop.is_set():
            self.poll()
            if self._serving:
                return True
            if self._failed:
                version, error = max(self._failed.items())
                raise StatusError(
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
                raise StatusError(
                    grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}"
                )
            servable.acquire()
            self._in_flight += 1
        try:
            yield servable
        finally:
            servable.release()
            with self._lock:
                self._in_flight -= 1

    @property
    def requests_in_flight(self) -> int:
        """Requests that hold a version now."""
        with self._lock:
            return self._in_flight

    def status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        """The states of the versions GetModelStatus asks for, newest first."""
        with self._lock:
            states = dict(self._states) if spec.name == self.name else {}
        if spec.HasField("version"):
            version = spec.version.value
            if version not in states:
                raise StatusError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {version} of model {spec.name}",
                )
            states = {version: states[version]}
        elif not states:
            raise StatusError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}"
            )
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(states, reverse=True):
            response.model_version_status.append(states[version])
        return response

    def _versions_on_disk(self) -> dict[int, Path] | None:
        """Numeric version directories by number; None when the base path is unreadable."""
        try:
            versions = contract.version_folders(self.base_path)
        except OSError as error:
            message = f"Could not find base path {self.base_path} for servable {self.name}: "
            self._log_listing_error(message + str(error))
            return None
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
        except StatusError as error:
            self._fail(version, error)
        except tf.errors.OpError as error:
            self._fail(version, StatusError.from_tf(error))
        # Whatever else a broken SavedModel raises must not stop the server.
        except Exception as error:
            self._fail(version, StatusError(grpc.StatusCode.UNKNOWN, f"{error!r}"))
        else:
            with self._lock:
                self._serving[version] = servable
            self._set_state(version, State.AVAILABLE)
            log.info(
                "Successfully loaded servable version {name: %s version: %d}", self.name, version
            )

    def _fail(self, version: int, error: StatusError) -> None:
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

    def _set_state(self, version: int, state: int, error: StatusError | None = None) -> None:
        record = get_model_status_pb2.ModelVersionStatus(version=version, state=state)
        # Always present, with error_code OK when healthy, as ToStatusProto writes it.
        record.status.CopyFrom(status_pb2.StatusProto() if error is None else error.status())
        with self._lock:
            self._states[version] = record
