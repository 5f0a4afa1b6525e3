"""One model's numbered SavedModel versions, loaded and unloaded as TensorFlow Serving does.

Sources followed (github.com/tensorflow/serving): model_servers/server_core.cc and
core/manager.h (model spec to servable request, version labels, "Servable not found for
request: Latest(NAME)"); sources/storage_path/file_system_storage_path_source.cc and
core/availability_preserving_policy.cc (numeric version directories, the latest one
aspired, a new version loaded before the old one unloads, a failed one never retried while
its directory stays); model_servers/get_model_status_impl.cc.

A failed load is tried again `LoadOptions.retries` times (core/loader_harness.cc;
tensorflow_model_server: 5 times, a minute apart), the version LOADING meanwhile. Version
labels and several models are `unet_keras.server.models`' part.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.util import deprecation
from tensorflow_serving.apis import get_model_status_pb2, model_pb2, status_pb2

from unet_keras import contract
from unet_keras.server.prometheus import Metrics
from unet_keras.server.status import StatusError
from unet_keras.server.warmup_replay import replay_warmup

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


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How versions load: tensorflow_model_server's --max_num_load_retries,
    --load_retry_interval_micros, --enable_model_warmup and session options.

    `stop`, once set, ends a wait between tries (the server is stopping).
    """

    retries: int = 0
    retry_interval: float = 60.0
    warmup: bool = True
    session_config: tf.compat.v1.ConfigProto | None = None
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)


class Servable:
    """One loaded SavedModel version, counting the requests that use it.

    Loaded as TF Serving's SavedModelBundle loads it: the 'serve' MetaGraphDef imported
    into a session of its own, the variables restored by the saver's restore op, the init
    op run; a signature then runs as Session::Run fed and fetched by the SignatureDef's
    tensor names. Not TF2's object-graph loader, which links variables that the session
    path leaves uninitialised: an export that TF Serving cannot run fails here too.
    """

    def __init__(self, version: int, path: Path, options: LoadOptions | None = None) -> None:
        options = options or LoadOptions()
        self.version = version
        self.signature_defs = dict(read_meta_graph(path).signature_def)
        graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=graph, config=options.session_config)
        try:
            # The TF1 loader is deprecated for Python users, but it is TF Serving's path: its
            # advice to use tf.saved_model.load would mislead a reader of the server's log.
            with graph.as_default(), deprecation.silence():
                tf.compat.v1.saved_model.loader.load(
                    self._session, [contract.SERVE_TAG], str(path)
                )
            self._users = 0
            self._idle = threading.Condition()
            # Before the version is AVAILABLE, as TF Serving does: the first real request
            # then pays no graph optimisation or allocation.
            start = time.perf_counter()
            self.warmup_records = replay_warmup(self, path) if options.warmup else 0
            self.warmup_seconds = time.perf_counter() - start
        except BaseException:
            self._session.close()
            raise

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        """A signature; FAILED_PRECONDITION when the model has no such one."""
        # The init op's entry (__saved_model_init_op) is no signature: it has no inputs.
        if name not in self.signature_defs or name.startswith("__"):
            raise StatusError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.'
            )
        return self.signature_defs[name]

    def run(
        self,
        signature: meta_graph_pb2.SignatureDef,
        feeds: dict[str, np.ndarray],
        outputs: list[str],
        timeout_ms: int = 0,
    ) -> dict[str, np.ndarray]:
        """Session::Run of `signature`: inputs by alias in, the `outputs` aliases out.

        `timeout_ms` > 0 bounds the run as TF Serving bounds it by the request's deadline
        (RunOptions.timeout_in_ms): past it the graph is cancelled, DEADLINE_EXCEEDED.
        """
        feed_dict = {signature.inputs[alias].name: value for alias, value in feeds.items()}
        fetches = {alias: signature.outputs[alias].name for alias in outputs}
        options = tf.compat.v1.RunOptions(timeout_in_ms=timeout_ms) if timeout_ms > 0 else None
        try:
            return self._session.run(fetches, feed_dict, options=options)
        except tf.errors.OpError as error:
            raise StatusError.from_tf(error) from None

    def close(self) -> None:
        """Frees the session, once no request uses it."""
        self.wait_idle()
        self._session.close()

    def cancel(self) -> None:
        """Closes the session now: runs in progress end with CANCELLED (the server stops)."""
        self._session.close()

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


def not_found(name: str, version: int | None) -> StatusError:
    """NOT_FOUND for a version that does not serve, in ServerCore's words."""
    wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return StatusError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}")


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk to serve: TF Serving's ServableVersionPolicy.

    `latest` the `count` newest (1 by default), `all` every one, `specific` those listed.
    """

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    def aspired(self, on_disk: Iterable[int]) -> set[int]:
        """The versions to serve out of those on disk."""
        on_disk = sorted(on_disk)
        if self.kind == "all":
            return set(on_disk)
        if self.kind == "specific":
            return set(on_disk) & set(self.versions)
        return set(on_disk[-self.count :])


class ModelManager:
    """One model's versions under a base path, loaded and unloaded as TF Serving does.

    The policy's versions are aspired; a new one is loaded while the previous one keeps
    serving, which is unloaded once every aspired version is available (or failed) and its
    in-flight requests are done. A version that fails to load is never served.
    """

    def __init__(
        self,
        name: str,
        base_path: str | Path,
        policy: VersionPolicy | None = None,
        metrics: Metrics | None = None,
        load_options: LoadOptions | None = None,
    ) -> None:
        self.name = name
        self.base_path = Path(base_path)
        self.policy = policy or VersionPolicy()
        self.metrics = metrics
        self.load_options = load_options or LoadOptions()
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
        aspired = self.policy.aspired(on_disk)
        for version in sorted(aspired - self._serving.keys() - self._failed.keys()):
            self._load(version, on_disk[version])
        superseded = sorted(v for v in self._serving if v not in aspired)
        if aspired and not aspired & self._serving.keys():
            superseded = superseded[:-1]  # keep the newest one serving until then
        for version in superseded:
            self._unload(version)

    def cancel_runs(self) -> None:
        """Cancels every run in progress on this model's versions (the server stops)."""
        with self._lock:
            servables = list(self._serving.values())
        for servable in servables:
            servable.cancel()

    def unload_all(self) -> None:
        """Unloads every version (the model left the config), waiting for their requests."""
        for version in sorted(self._serving):
            self._unload(version)

    def failure(self) -> tuple[int, StatusError] | None:
        """The newest version that failed to load while none serves, with its error."""
        if self._serving or not self._failed:
            return None
        return max(self._failed.items())

    def available(self) -> set[int]:
        """The versions serving now."""
        with self._lock:
            return set(self._serving)

    @contextmanager
    def servable(self, version: int | None) -> Iterator[Servable]:
        """A version (None: the latest), kept loaded until the request is done."""
        with self._lock:
            servable = None
            if self._serving:
                servable = self._serving.get(max(self._serving) if version is None else version)
            if servable is None:
                raise not_found(self.name, version)
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
            states = dict(self._states)
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
        servable = self._load_with_retries(version, path)
        if isinstance(servable, StatusError):
            self._fail(version, servable)
            return
        if self.metrics is not None and servable.warmup_records:
            self.metrics.warmup(str(path), "OK", servable.warmup_seconds * 1e6)
        with self._lock:
            self._serving[version] = servable
        self._set_state(version, State.AVAILABLE)
        log.info("Successfully loaded servable version {name: %s version: %d}", self.name, version)

    def _load_with_retries(self, version: int, path: Path) -> Servable | StatusError:
        """The loaded version, or the last error after 1 + `retries` tries, as TF Serving's
        LoaderHarness tries (LOADING meanwhile); a version gone from disk is not tried again."""
        options = self.load_options
        what = f"Loading servable: {{name: {self.name} version: {version}}}"
        tries = 0
        while True:
            tries += 1
            try:
                return Servable(version, path, options)
            except StatusError as error:
                failure = error
            except tf.errors.OpError as error:
                failure = StatusError.from_tf(error)
            # Whatever else a broken SavedModel raises must not stop the server.
            except Exception as error:
                failure = StatusError(grpc.StatusCode.UNKNOWN, f"{error!r}")
            log.error("%s failed: %s: %s", what, failure.code.name, failure.message)
            if tries > options.retries:
                if options.retries:
                    log.info("Retrying of %s exhausted max_num_retries: %d", what, options.retries)
                return failure
            if options.stop.wait(options.retry_interval) or not path.is_dir():
                log.info("Retrying of %s was cancelled.", what)
                return failure
            log.info("Retrying of %s retry: %d", what, tries)

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
        servable.close()
        self._set_state(version, State.END)
        log.info("Unloaded servable version {name: %s version: %d}", self.name, version)

    def _set_state(self, version: int, state: int, error: StatusError | None = None) -> None:
        record = get_model_status_pb2.ModelVersionStatus(version=version, state=state)
        # Always present, with error_code OK when healthy, as ToStatusProto writes it.
        record.status.CopyFrom(status_pb2.StatusProto() if error is None else error.status())
        with self._lock:
            self._states[version] = record
