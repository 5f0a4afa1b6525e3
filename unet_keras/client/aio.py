"""The asyncio client: `SegmentationClient`'s methods as coroutines, on `grpc.aio`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
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


class AsyncSegmentationClient(ClientBase):
    """An asyncio client for the U-Net on TF Serving, over one long-lived gRPC channel.

    Create it inside the event loop that uses it, e.g. `async with
    AsyncSegmentationClient(...) as client:`. The arguments are `ClientBase`'s.
    """

    def _connect(self) -> grpc.aio.Channel:
        config = self.channel_config
        credentials = config.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(
                self.target, config.options(), compression=config.grpc_compression
            )
        return grpc.aio.secure_channel(
            self.target, credentials, config.options(), compression=config.grpc_compression
        )

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncSegmentationClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _call(
        self, method: messages.Method, request: Any, timeout: float | None = None
    ) -> Any:
        """One unary call with the retry policy, all attempts within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout(timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._stubs[method.path](
                    request, timeout=max(deadline - loop.time(), 0.0)
                )
            except grpc.RpcError as error:
                failure = from_rpc_error(error, method.path)
                cause = error
            delay = self.retry.backoff(attempt)
            if not self.retry.retries(failure.code, attempt) or loop.time() + delay >= deadline:
                raise failure from cause
            await asyncio.sleep(delay)

    async def model_status(self, version: Version = None, *, timeout: float | None = None) -> list:
        """Every version's state (ModelService/GetModelStatus), as dicts."""
        request = self._status_request(version)
        return protocol.statuses(await self._call(messages.GET_MODEL_STATUS, request, timeout))

    async def metadata(self, version: Version = None, *, timeout: float | None = None) -> dict:
        """The model's signatures: inputs and outputs with dtypes and shapes, as dicts."""
        request = protocol.metadata_request(self._spec(version))
        return protocol.signatures(await self._call(messages.GET_MODEL_METADATA, request, timeout))

    async def model_record(self, version: Version = None, *, timeout: float | None = None) -> dict:
        """The model's JSON record (mask, normalization, model, tile, threshold)."""
        request = self._record_request(version)
        return protocol.record(await self._call(messages.PREDICT, request, timeout))

    async def wait_until_available(
        self, timeout: float = 60.0, version: Version = None, *, poll_interval: float = 0.5
    ) -> int:
        """Polls GetModelStatus until a version is AVAILABLE; returns the newest such version."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer yet"
        while (remaining := deadline - loop.time()) > 0:
            try:
                states = await self.model_status(version, timeout=min(self.timeout, remaining))
            except (NotFoundError, UnavailableError, DeadlineExceededError) as error:
                last = str(error)
            else:
                found = available_version(states)
                if found is not None:
                    return found
                last = describe(states)
            await asyncio.sleep(max(min(poll_interval, deadline - loop.time()), 0.0))
        raise self._not_available(timeout, last)

    async def predict(
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
        return protocol.outputs(await self._call(messages.PREDICT, request, timeout))

    async def segment(
        self,
        image: Any,
        *,
        version: Version = None,
        probabilities: bool = False,
        timeout: float | None = None,
    ) -> Segmentation:
        """Segments one [H, W] or [H, W, C] image of any size, tiled to fit the message limits."""
        image = protocol.image_array(image)
        layout = None
        if probabilities or not protocol.fits_one_request(image, self.channel_config):
            layout = await self._layout(version, timeout)
        tiles = protocol.tiles_for(image, self.channel_config, layout, probabilities)
        results = []
        for tile in tiles:
            request = self._tile_request(image[tile.region], version, probabilities)
            results.append(protocol.outputs(await self._call(messages.PREDICT, request, timeout)))
        return protocol.assemble(tiles, results, image)

    async def segment_many(
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
        slots = asyncio.Semaphore(concurrency)

        async def one(image: Any) -> Segmentation:
            async with slots:
                return await self.segment(
                    image, version=version, probabilities=probabilities, timeout=timeout
                )

        return list(await asyncio.gather(*(one(image) for image in images)))

    async def _layout(self, version: Version, timeout: float | None) -> Layout:
        cached = self._cached_layout(version)
        if cached is not None:
            return cached
        return self._store_layout(version, await self.model_record(version, timeout=timeout))
