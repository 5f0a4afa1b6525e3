"""What the blocking and the asyncio client share: settings, requests, cached layouts."""

from __future__ import annotations

import abc
from typing import Any

from unet_keras.client import messages, protocol
from unet_keras.client.config import ChannelConfig, RetryPolicy
from unet_keras.client.errors import DeadlineExceededError
from unet_keras.client.protocol import Layout, Version

METHODS = (messages.PREDICT, messages.GET_MODEL_METADATA, messages.GET_MODEL_STATUS)
# The exported model's aliases (unet_keras.serving.export).
SEGMENT_SIGNATURE = "serving_default"
METADATA_SIGNATURE = "metadata"
IMAGE_INPUT = "image"


class ClientBase(abc.ABC):
    """Settings, channel and request building; subclasses make the calls.

    `target` is HOST:PORT (or any gRPC target, e.g. dns:///unet-serving:8500), and
    `model_name` the name the server serves the model under. `timeout` is each call's
    deadline in seconds, retries included; `channel` and `retry` default to
    `ChannelConfig()` and `RetryPolicy()`. `context` and `grid` (pixels) override what
    tiling reads from the model's record; see `unet_keras.geometry`.
    """

    def __init__(
        self,
        target: str,
        model_name: str = "unet",
        *,
        timeout: float = 30.0,
        channel: ChannelConfig | None = None,
        retry: RetryPolicy | None = None,
        context: int | None = None,
        grid: int | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}")
        if context is not None and context < 0:
            raise ValueError(f"context must be at least 0 pixels, got {context}")
        if grid is not None and grid < 1:
            raise ValueError(f"grid must be at least 1 pixel, got {grid}")
        self.target = target
        self.model_name = model_name
        self.timeout = timeout
        self.channel_config = channel or ChannelConfig()
        self.retry = retry or RetryPolicy()
        self.context = context
        self.grid = grid
        # Only numbered versions: what a label or "latest" points at can change.
        self._layouts: dict[int, Layout] = {}
        self._channel = self._connect()
        self._stubs = {
            method.path: self._channel.unary_unary(
                method.path,
                request_serializer=method.request.SerializeToString,
                response_deserializer=method.response.FromString,
            )
            for method in METHODS
        }

    @abc.abstractmethod
    def _connect(self) -> Any:
        """Opens the channel (`grpc` or `grpc.aio`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, {self.model_name!r})"

    def _spec(self, version: Version, signature: str = "") -> Any:
        return protocol.model_spec(self.model_name, version, signature)

    def _status_request(self, version: Version) -> Any:
        return messages.GetModelStatusRequest(model_spec=self._spec(version))

    def _record_request(self, version: Version) -> Any:
        return protocol.predict_request(self._spec(version, METADATA_SIGNATURE), {})

    def _tile_request(self, tile: Any, version: Version, probabilities: bool) -> Any:
        outputs = ("mask", "probabilities") if probabilities else ("mask",)
        return protocol.predict_request(
            self._spec(version, SEGMENT_SIGNATURE), {IMAGE_INPUT: tile[None]}, outputs
        )

    def _cached_layout(self, version: Version) -> Layout | None:
        return self._layouts.get(version) if isinstance(version, int) else None

    def _store_layout(self, version: Version, record: dict[str, Any]) -> Layout:
        layout = protocol.layout(record["model"], self.context, self.grid)
        if isinstance(version, int):
            self._layouts[version] = layout
        return layout

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def _not_available(self, timeout: float, last: str) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"model {self.model_name!r} at {self.target} had no AVAILABLE version after "
            f"{timeout:g} s; last seen: {last}",
            method=messages.GET_MODEL_STATUS.path,
        )


def available_version(states: list[dict[str, Any]]) -> int | None:
    """The newest AVAILABLE version in a model_status() answer, if any."""
    versions = [state["version"] for state in states if state["state"] == "AVAILABLE"]
    return max(versions, default=None)


def describe(states: list[dict[str, Any]]) -> str:
    """A model_status() answer in one line, for error messages."""
    if not states:
        return "no versions"
    return ", ".join(f"version {s['version']} {s['state']}" for s in states)
