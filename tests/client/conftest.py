"""Fixtures of the client tests: TF Serving's own messages, a fake server, both clients."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import types
from typing import Any

import pytest

from tests.client.fake_serving import FakeServing
from unet_keras.client import AsyncSegmentationClient, RetryPolicy, SegmentationClient

FAST_RETRY = RetryPolicy(attempts=4, initial_backoff=0.01, max_backoff=0.02)


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the clients' retries ask for, in order (they are still slept)."""
    from unet_keras.client import core

    pauses: list[float] = []

    @dataclasses.dataclass(frozen=True)
    class RecordedSleep(core.Sleep):
        def __post_init__(self) -> None:
            pauses.append(self.seconds)

    monkeypatch.setattr(core, "Sleep", RecordedSleep)
    return pauses


@pytest.fixture(scope="module")
def tf() -> types.SimpleNamespace:
    """TensorFlow and TF Serving's own message modules, imported after the client's."""
    import tensorflow
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2,
        predict_pb2,
        prediction_service_pb2,
    )

    return types.SimpleNamespace(
        tf=tensorflow,
        tensor_pb2=tensor_pb2,
        predict_pb2=predict_pb2,
        get_model_metadata_pb2=get_model_metadata_pb2,
        get_model_status_pb2=get_model_status_pb2,
        services=(model_service_pb2, prediction_service_pb2),
    )


@pytest.fixture
def fake() -> Any:
    """A running fake server."""
    server = FakeServing().start()
    yield server
    server.stop()


class BlockingFacade:
    """An AsyncSegmentationClient behind the blocking client's methods.

    Its own event loop runs each coroutine to the end, so one test body checks the
    asyncio client exactly as it checks the blocking one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()

        async def create() -> AsyncSegmentationClient:
            return AsyncSegmentationClient(*args, **kwargs)

        self._client = self._loop.run_until_complete(create())

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if inspect.iscoroutinefunction(value):
            return lambda *args, **kwargs: self._loop.run_until_complete(value(*args, **kwargs))
        return value

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()

    def __enter__(self) -> BlockingFacade:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture(params=["blocking", "asyncio"])
def connect(request: pytest.FixtureRequest) -> Any:
    """Opens a client of each kind in turn: `connect(target, **options)`."""
    return SegmentationClient if request.param == "blocking" else BlockingFacade


@pytest.fixture
def client(fake: FakeServing, connect: Any) -> Any:
    """A client of the fake server with quick retries (blocking, then asyncio)."""
    with connect(fake.address, timeout=5, retry=FAST_RETRY) as connected:
        yield connected
