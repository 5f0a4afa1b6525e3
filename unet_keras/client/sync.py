"""The blocking client."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from unet_keras.client import messages, protocol
from unet_keras.client.base import ClientBase, available_version, describe
from unet_keras.client.errors import (
    DeadlineExceededError,
    NotFoundError,
    UnavailableError,
    from_rpc_error,
)
from unet_keras.client.protocol import Layout, Segmentation, Version


class SegmentationClient(ClientBase):
    """A blocking client for the U-Net on TF Serving, over one long-lived gRPC channel.

    Thread-safe: share one per target (`segment_many` calls it from a thread pool). The
    arguments are `ClientBase`'s.
    """

    def _connect(self) -> grpc.Channel:
        config = self.channel_config
        credentials = config.credentials()
        if credentials is None:
            return grpc.insecure_channel(
                self.target, config.options(), compression=config.grpc_compression
            )
        return grpc.secure_channel(
            self.target, credentials, config.options(), compression=config.grpc_compression
        )

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: messages.Method, request: Any, timeout: float | None = None) -> Any:
        """One unary call with the retry policy, all attempts within `timeout` seconds."""
        deadline = time.monotonic() + self._timeout(timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._stubs[method.path](
                    request, timeout=max(deadline - time.monotonic(), 0.0)
                )
            except grpc.RpcError as error:
                failure = from_rpc_error(error, method.path)
                cause = error
            delay = self.retry.backoff(attempt)
            if not self.retry.retries(failure.code, attempt) or (
                time.monotonic() + delay >= deadline
            ):
                raise failure from cause
            time.sleep(delay)

    def model_status(self, version: Version = None, *, timeout: float | None = None) -> list:
        """Every version's state (ModelService/GetModelStatus), as dicts."""
        request = self._status_request(version)
        return protocol.statuses(self._call(messages.GET_MODEL_STATUS, request, timeout))

    def metadata(self, version: Version = None, *, timeout: float | None = None) -> dict:
        """The model's signatures: inputs and outputs with dtypes and shapes, as dicts."""
        request = protocol.metadata_request(self._spec(version))
        return protocol.signatures(self._call(messages.GET_MODEL_METADATA, request, timeout))

    def model_record(self, version: Version = None, *, timeout: float | None = None) -> dict:
        """The model's JSON record (mask, normalization, model, tile, threshold)."""
        request = self._record_request(version)
        return protocol.record(self._call(messages.PREDICT, request, timeout))

    def wait_until_available(
        self, timeout: float = 60.0, version: Version = None, *, poll_interval: float = 0.5
    ) -> int:
        """Polls GetModelStatus until a version is AVAILABLE; returns the newest such version.

        A server still starting (UNAVAILABLE) or not yet knowing the model (NOT_FOUND)
        counts as not available yet. Raises DeadlineExceededError after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                states = self.model_status(version, timeout=min(self.timeout, remaining))
            except (NotFoundError, UnavailableError, DeadlineExceededError) as error:
                last = str(error)
            else:
                found = available_version(states)
                if found is not None:
                    return found
                last = describe(states)
            time.sleep(max(min(poll_interval, deadline - time.monotonic()), 0.0))
        raise self._not_available(timeout, last)

    def predict(
        self,
        inputs: dict[str, Any],
        *,
        signature: str = "",
        version: Version = None,
        output_filter: Sequence[str] = (),
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Any signature: numpy inputs by alias in, numpy outputs by alias out."""
        request = protocol.predict_request(self._spec(version, signature), inputs, output_filter)
        return protocol.outputs(self._call(messages.PREDICT, request, timeout))

    def segment(
        self,
        image: Any,
        *,
        version: Version = None,
        probabilities: bool = False,
        timeout: float | None = None,
    ) -> Segmentation:
        """Segments one [H, W] or [H, W, C] image of any size, tiled to fit the message limits.

        `timeout` applies to each request; an image is one request unless tiled.
        """
        image = protocol.image_array(image)
        layout = None
        if probabilities or not protocol.fits_one_request(image, self.channel_config):
            layout = self._layout(version, timeout)
        tiles = protocol.tiles_for(image, self.channel_config, layout, probabilities)
        results = []
        for tile in tiles:
            request = self._tile_request(image[tile.region], version, probabilities)
            results.append(protocol.outputs(self._call(messages.PREDICT, request, timeout)))
        return protocol.assemble(tiles, results, image)

    def segment_many(
        self,
        images: Iterable[Any],
        *,
        concurrency: int = 4,
        version: Version = None,
        probabilities: bool = False,
        timeout: float | None = None,
    ) -> list[Segmentation]:
        """Segments images with up to `concurrency` requests in flight; results in order."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")

        def one(image: Any) -> Segmentation:
            return self.segment(
                image, version=version, probabilities=probabilities, timeout=timeout
            )

        with ThreadPoolExecutor(concurrency, thread_name_prefix="unet-client") as pool:
            return list(pool.map(one, images))

    def _layout(self, version: Version, timeout: float | None) -> Layout:
        cached = self._cached_layout(version)
        if cached is not None:
            return cached
        return self._store_layout(version, self.model_record(version, timeout=timeout))
