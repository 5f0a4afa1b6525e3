"""What the blocking and the asyncio client share: everything but the transport.

Each client operation (a call with retries, waiting for a version, segmenting a tiled
image) is written once, here, as a generator that yields the I/O it needs, a `Call` or
a `Sleep`, and receives each call's response (or has its `ServingError` thrown in). The
blocking client runs these generators with `grpc` and `time.sleep`, the asyncio client
with `grpc.aio` and `asyncio.sleep`; neither holds any logic of its own beyond that and
running several images at once.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Generator
from typing import Any, TypeVar

import numpy as np

from unet_keras import contract
from unet_keras.client import messages, protocol
from unet_keras.client.config import ChannelConfig, RetryPolicy
from unet_keras.client.errors import (
    DeadlineExceededError,
    NotFoundError,
    ServingError,
    UnavailableError,
)
from unet_keras.client.protocol import Layout, Segmentation, Version
from unet_keras.client.rest import RestTransport
from unet_keras.record import ModelRecord

METHODS = (messages.PREDICT, messages.GET_MODEL_METADATA, messages.GET_MODEL_STATUS)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Call:
    """I/O an operation needs: one attempt of a unary call, within `timeout` seconds."""

    method: messages.Method
    request: Any
    timeout: float


@dataclasses.dataclass(frozen=True)
class Sleep:
    """I/O an operation needs: a pause of `seconds`."""

    seconds: float


# An operation: yields Calls and Sleeps, is sent each Call's response, returns its result.
Operation = Generator[Call | Sleep, Any, T]


class ClientCore(abc.ABC):
    """Settings, channel, and every operation of the client; subclasses run them.

    `target` is HOST:PORT (or any gRPC target, e.g. dns:///unet-serving:8500), and
    `model_name` the name the server serves the model under. `transport` "rest" sends the
    same calls to TF Serving's REST API (target HOST:PORT of the REST port, e.g. 8501)
    instead of gRPC. `timeout` is each call's
    deadline in seconds, retries included; `channel` and `retry` default to
    `ChannelConfig()` and `RetryPolicy()`. `context` and `grid` (pixels) override what
    tiling reads from the model's record (see `unet_keras.geometry.plan_image_windows`).
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
        transport: str = "grpc",
    ) -> None:
        if transport not in ("grpc", "rest"):
            raise ValueError(f"transport must be 'grpc' or 'rest', got {transport!r}")
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
        self.transport = transport
        # Only numbered versions: what a label or "latest" points at can change.
        self._layouts: dict[int, Layout] = {}
        if transport == "rest":
            self._rest: RestTransport | None = RestTransport(target, self.channel_config)
            self._channel, self._stubs = None, {}
            return
        self._rest = None
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

    def _call(
        self, method: messages.Method, request: Any, timeout: float | None = None
    ) -> Operation[Any]:
        """One unary call with the retry policy, all attempts within `timeout` seconds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                return (yield Call(method, request, max(deadline - time.monotonic(), 0.0)))
            except ServingError as failure:
                delay = self.retry.backoff(attempt)
                if not self.retry.retries(failure.code, attempt):
                    raise
                if time.monotonic() + delay >= deadline:
                    raise
            yield Sleep(delay)

    def _spec(self, version: Version, signature: str = "") -> Any:
        return protocol.model_spec(self.model_name, version, signature)

    def _model_status(self, version: Version, timeout: float | None) -> Operation[list]:
        request = messages.GetModelStatusRequest(model_spec=self._spec(version))
        response = yield from self._call(messages.GET_MODEL_STATUS, request, timeout)
        return protocol.statuses(response)

    def _metadata(self, version: Version, timeout: float | None) -> Operation[dict]:
        request = protocol.metadata_request(self._spec(version))
        response = yield from self._call(messages.GET_MODEL_METADATA, request, timeout)
        return protocol.signatures(response)

    def _model_record(self, version: Version, timeout: float | None) -> Operation[ModelRecord]:
        request = protocol.predict_request(self._spec(version, contract.METADATA), {})
        response = yield from self._call(messages.PREDICT, request, timeout)
        return protocol.record(response)

    def _predict(
        self,
        inputs: dict[str, Any],
        signature: str,
        version: Version,
        output_filter: tuple[str, ...] | list[str],
        timeout: float | None,
    ) -> Operation[dict]:
        request = protocol.predict_request(self._spec(version, signature), inputs, output_filter)
        response = yield from self._call(messages.PREDICT, request, timeout)
        return protocol.outputs(response)

    def _wait_until_available(
        self, timeout: float, version: Version, poll_interval: float
    ) -> Operation[int]:
        """Polls GetModelStatus until a version is AVAILABLE; returns the newest such one.

        A server still starting (UNAVAILABLE) or not yet knowing the model (NOT_FOUND)
        counts as not available yet.
        """
        deadline = time.monotonic() + timeout
        last, state = "no answer yet", ""
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                states = yield from self._model_status(version, min(self.timeout, remaining))
            except (NotFoundError, UnavailableError) as error:
                last = str(error)
            except DeadlineExceededError as error:
                # A poll cut short by the overall deadline says less than the state seen
                # before it: keep that state and say the poll timed out.
                last = f"{state} (then a poll timed out)" if state else str(error)
            else:
                found = available_version(states)
                if found is not None:
                    return found
                last = state = describe(states)
            yield Sleep(max(min(poll_interval, deadline - time.monotonic()), 0.0))
        raise DeadlineExceededError(
            f"model {self.model_name!r} at {self.target} had no AVAILABLE version after "
            f"{timeout:g} s; last seen: {last}",
            method=messages.GET_MODEL_STATUS.path,
        )

    def _segment(
        self, image: Any, version: Version, probabilities: bool, timeout: float | None
    ) -> Operation[Segmentation]:
        """Segments one image, in windows that fit the message limits when it is large."""
        image = protocol.image_array(image)
        layout = None
        fits = protocol.fits_one_request(image, self.channel_config, json=self._rest is not None)
        if probabilities or not fits:
            layout = yield from self._layout(version, timeout)
        windows = protocol.windows_for(
            image, self.channel_config, layout, probabilities, json=self._rest is not None
        )
        outputs = (contract.MASK, contract.PROBABILITIES) if probabilities else (contract.MASK,)
        # REST has no output filter and carries pixels as JSON text, ten times slower than
        # the model: a mask alone goes through segment_png, PNG both ways, the same mask.
        as_png = self._rest is not None and not probabilities and protocol.sends_as_png(image)
        results = []
        for window in windows:
            if as_png:
                png = np.array([protocol.png_bytes(image[window.region])], object)
                signature = contract.SEGMENT_PNG
                result = yield from self._predict(
                    {contract.IMAGE_PNG: png}, signature, version, (), timeout
                )
                result = protocol.png_mask_output(result)
            else:
                inputs = {contract.IMAGE: image[window.region][None]}
                result = yield from self._predict(
                    inputs, contract.SEGMENT, version, outputs, timeout
                )
            results.append(result)
        return protocol.assemble(windows, results, image)

    def _layout(self, version: Version, timeout: float | None) -> Operation[Layout]:
        """What tiling needs from the model's record, cached per numbered version."""
        if isinstance(version, int) and version in self._layouts:
            return self._layouts[version]
        record = yield from self._model_record(version, timeout)
        layout = protocol.layout(record, self.context, self.grid)
        if isinstance(version, int):
            self._layouts[version] = layout
        return layout


def available_version(states: list[dict[str, Any]]) -> int | None:
    """The newest AVAILABLE version in a model_status() answer, if any."""
    versions = [state["version"] for state in states if state["state"] == "AVAILABLE"]
    return max(versions, default=None)


def describe(states: list[dict[str, Any]]) -> str:
    """A model_status() answer in one line, for error messages."""
    if not states:
        return "no versions"
    return ", ".join(f"version {s['version']} {s['state']}" for s in states)
