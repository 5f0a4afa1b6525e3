"""The asyncio client: the shared operations run over `grpc.aio` with `asyncio.sleep`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from unet_keras.client.core import Call, ClientCore, Operation
from unet_keras.client.errors import ServingError, from_rpc_error
from unet_keras.client.protocol import Segmentation, Version
from unet_keras.record import ModelRecord

T = TypeVar("T")


class AsyncSegmentationClient(ClientCore):
    """An asyncio client for the U-Net on TF Serving, over one long-lived gRPC channel.

    `SegmentationClient`'s methods as coroutines. Create it inside the event loop that
    uses it, e.g. `async with AsyncSegmentationClient(...) as client:`. The arguments are
    `ClientCore`'s.
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
        """Closes the channel (or REST connections); calls in flight are cancelled."""
        if self._rest is not None:
            self._rest.close()
        else:
            await self._channel.close()

    async def __aenter__(self) -> AsyncSegmentationClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _run(self, operation: Operation[T]) -> T:
        """Carries out an operation's calls and pauses; returns its result."""
        reply: Any = None
        failure: BaseException | None = None
        while True:
            try:
                step = operation.send(reply) if failure is None else operation.throw(failure)
            except StopIteration as done:
                return done.value
            reply, failure = None, None
            if not isinstance(step, Call):
                await asyncio.sleep(step.seconds)
                continue
            try:
                if self._rest is not None:
                    # http.client blocks: a worker thread keeps the event loop free.
                    call = self._rest.call
                    reply = await asyncio.to_thread(call, step.method, step.request, step.timeout)
                else:
                    reply = await self._stubs[step.method.path](step.request, timeout=step.timeout)
            except grpc.RpcError as error:
                failure = from_rpc_error(error, step.method.path)
            except ServingError as error:
                failure = error

    async def model_status(self, version: Version = None, *, timeout: float | None = None) -> list:
        """Every version's state (ModelService/GetModelStatus), as dicts."""
        return await self._run(self._model_status(version, timeout))

    async def metadata(self, version: Version = None, *, timeout: float | None = None) -> dict:
        """The model's signatures: inputs and outputs with dtypes and shapes, as dicts."""
        return await self._run(self._metadata(version, timeout))

    async def model_record(
        self, version: Version = None, *, timeout: float | None = None
    ) -> ModelRecord:
        """The model's record: mask convention, normalisation, shape, tile, threshold."""
        return await self._run(self._model_record(version, timeout))

    async def wait_until_available(
        self, timeout: float = 60.0, version: Version = None, *, poll_interval: float = 0.5
    ) -> int:
        """Waits until a version is AVAILABLE and returns the newest such version."""
        return await self._run(self._wait_until_available(timeout, version, poll_interval))

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
        operation = self._predict(inputs, signature, version, tuple(output_filter), timeout)
        return await self._run(operation)

    async def segment(
        self,
        image: Any,
        *,
        version: Version = None,
        probabilities: bool = False,
        timeout: float | None = None,
    ) -> Segmentation:
        """Segments one [H, W] or [H, W, C] image of any size, tiled to fit the message limits."""
        return await self._run(self._segment(image, version, probabilities, timeout))

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
