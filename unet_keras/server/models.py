"""The models a server serves, their version labels, and the model config file.

What TF Serving's ServerCore does for a `ModelServerConfig` (model_servers/server_core.cc;
the file format is its text proto, as `--model_config_file` reads it): one
`ModelManager` per configured model, each with its version policy; labels that map to a
version; a new config applied while running (models added are loaded, those left out are
unloaded, policies and labels change in place).

As in TF Serving, a label may only name a version that is AVAILABLE when the config is
applied (so labels in the config a server starts with need
`--allow-version-labels-for-unavailable-models`), and that flag relaxes only new labels,
never moving one. Deviation: a config TF Serving refuses is refused whole here (TF Serving
has already switched to it when its label check fails, and loads its models at the next
poll).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from unet_keras.server.prometheus import Metrics
from unet_keras.server.status import StatusError
from unet_keras.server.versions import (
    LoadOptions,
    ModelManager,
    Servable,
    VersionPolicy,
    not_found,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model of a config: its name, base path, version policy and labels."""

    name: str
    base_path: str
    policy: VersionPolicy = dataclasses.field(default_factory=VersionPolicy)
    labels: tuple[tuple[str, int], ...] = ()


def read_model_config(path: str | os.PathLike) -> list[ModelEntry]:
    """The models of a `--model-config-file` (a text ModelServerConfig), checked as
    TF Serving checks them; StatusError INVALID_ARGUMENT names what is wrong."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"--model-config-file {path}: cannot read it ({error})",
        ) from None
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"--model-config-file {path}: not a text ModelServerConfig ({error})",
        ) from None
    if config.WhichOneof("config") != "model_config_list":
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"--model-config-file {path}: holds no model_config_list (custom_model_config "
            "is not supported)",
        )
    return [_entry(model) for model in config.model_config_list.config]


def _entry(model: model_server_config_pb2.ModelConfig) -> ModelEntry:
    if model.model_platform not in ("", "tensorflow"):
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Model {model.name}: platform {model.model_platform!r} is not served here "
            "(only 'tensorflow')",
        )
    # server_core.cc's ValidateModelConfigList, without --model_config_list_root_dir.
    if not os.path.isabs(model.base_path):
        raise StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Expected model {model.name} to have an absolute path or URI; got "
            f"base_path()={model.base_path}",
        )
    choice = model.model_version_policy.WhichOneof("policy_choice")
    if choice == "all":
        policy = VersionPolicy("all")
    elif choice == "specific":
        versions = tuple(model.model_version_policy.specific.versions)
        if not versions:
            raise StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Model {model.name}: a specific version policy lists no versions",
            )
        policy = VersionPolicy("specific", versions=versions)
    else:
        count = model.model_version_policy.latest.num_versions if choice == "latest" else 1
        policy = VersionPolicy("latest", count=max(count, 1))
    labels = tuple(sorted(model.version_labels.items()))
    return ModelEntry(model.name, model.base_path, policy, labels)


class ModelRegistry:
    """Every served model, by name, with the label map; what the services ask for versions."""

    def __init__(
        self,
        allow_labels_for_unavailable: bool = False,
        metrics: Metrics | None = None,
        load_options: LoadOptions | None = None,
    ) -> None:
        self.allow_labels_for_unavailable = allow_labels_for_unavailable
        self.metrics = metrics
        self.load_options = load_options or LoadOptions()
        self._lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._managers: dict[str, ModelManager] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._entries: list[ModelEntry] | None = None

    @property
    def names(self) -> list[str]:
        """The models configured now."""
        with self._lock:
            return sorted(self._managers)

    def apply(self, entries: list[ModelEntry]) -> bool:
        """Switches to a config; True when it changed anything.

        StatusError, and nothing changes, when it lists a model twice or a label names a
        version that is not AVAILABLE.
        """
        with self._apply_lock:
            if entries == self._entries:
                return False
            names = [entry.name for entry in entries]
            for name in names:
                if names.count(name) > 1:
                    raise StatusError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Illegal to list model {name} multiple times in config list",
                    )
            labels = {entry.name: self._checked_labels(entry) for entry in entries}
            with self._lock:
                old = self._managers
                managers = {}
                for entry in entries:
                    manager = old.get(entry.name)
                    if manager is None or manager.base_path != Path(entry.base_path):
                        manager = ModelManager(
                            entry.name, entry.base_path, entry.policy, self.metrics,
                            self.load_options,
                        )  # fmt: skip
                    manager.policy = entry.policy
                    managers[entry.name] = manager
                self._managers = managers
                self._labels = labels
            self._entries = list(entries)
        for name, manager in old.items():
            if managers.get(name) is not manager:
                manager.unload_all()
        return True

    def _checked_labels(self, entry: ModelEntry) -> dict[str, int]:
        """server_core.cc's UpdateModelVersionLabelMap for one model."""
        with self._lock:
            manager = self._managers.get(entry.name)
            current = dict(self._labels.get(entry.name, {}))
        available = manager.available() if manager is not None else set()
        for label, version in entry.labels:
            moved = label in current and current[label] != version
            if version in available or (self.allow_labels_for_unavailable and not moved):
                continue
            raise StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Request to assign label to version {version} of model {entry.name}, which "
                "is not currently available for inference",
            )
        return dict(entry.labels)

    def poll(self) -> None:
        """One look at every model's base path."""
        with self._lock:
            managers = list(self._managers.values())
        for manager in managers:
            manager.poll()

    def start(self, poll_seconds: float, stop: threading.Event) -> bool:
        """Polls until every model serves a version (True) or `stop` is set (False).

        Raises StatusError, as TF Serving fails to start, when a model's versions fail.
        """
        while not stop.is_set():
            self.poll()
            with self._lock:
                managers = list(self._managers.values())
            found = [(manager.name, manager.failure()) for manager in managers]
            failures = [(name, failure) for name, failure in found if failure is not None]
            if failures:
                listed = ", ".join(
                    f"{{name: {name} version: {version}}} due to error: {error.code.name}: "
                    f"{error.message}"
                    for name, (version, error) in failures
                )
                raise StatusError(
                    grpc.StatusCode.UNKNOWN,
                    f"{len(failures)} model(s) did not become available: {{{listed}, }}",
                )
            if all(manager.available() for manager in managers):
                return True
            stop.wait(poll_seconds)
        return False

    def poll_until(self, poll_seconds: float, stop: threading.Event) -> None:
        """Polls every `poll_seconds` until `stop` is set."""
        while not stop.wait(poll_seconds):
            self.poll()

    def manager(self, name: str) -> ModelManager | None:
        """The manager of a configured model."""
        with self._lock:
            return self._managers.get(name)

    def version_for(self, spec: model_pb2.ModelSpec) -> int | None:
        """The version a spec asks for (None: the latest), labels resolved (ServerCore)."""
        if not spec.name:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            with self._lock:
                version = self._labels.get(spec.name, {}).get(spec.version_label)
            if version is None:
                raise StatusError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Unrecognized servable version label: {spec.version_label}",
                )
            return version
        return spec.version.value if choice == "version" else None

    @contextmanager
    def servable(self, spec: model_pb2.ModelSpec) -> Iterator[Servable]:
        """The version a request asks for, kept loaded until the request is done."""
        version = self.version_for(spec)
        manager = self.manager(spec.name)
        if manager is None:
            raise not_found(spec.name, version)
        with manager.servable(version) as servable:
            yield servable

    def status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus: the states of a model's versions (a label asks for all of them)."""
        manager = self.manager(spec.name)
        if manager is None:
            if spec.HasField("version"):
                raise StatusError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {spec.version.value} of model {spec.name}",
                )
            raise StatusError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}"
            )
        return manager.status(spec)

    def cancel_runs(self) -> None:
        """Cancels every run in progress, over every model (the server stops)."""
        with self._lock:
            managers = list(self._managers.values())
        for manager in managers:
            manager.cancel_runs()

    @property
    def requests_in_flight(self) -> int:
        """Requests that hold a version now, over every model."""
        with self._lock:
            managers = list(self._managers.values())
        return sum(manager.requests_in_flight for manager in managers)
