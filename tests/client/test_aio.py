"""The asyncio client in its own event loop: the operations are shared and tested in
test_core.py for both clients; here, what only asyncio has."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.client.conftest import FAST_RETRY
from tests.client.fake_serving import FakeServing
from unet_keras.client import AsyncSegmentationClient


def test_many_images_in_one_event_loop(fake: FakeServing) -> None:
    async def run() -> list:
        fake.delay = 0.05
        async with AsyncSegmentationClient(fake.address, retry=FAST_RETRY, timeout=5) as aio:
            images = [np.full((8, 9 + i), 40 * i, np.uint8) for i in range(6)]
            # Two coroutines share the client: gather interleaves their requests.
            first, second = await asyncio.gather(
                aio.segment_many(images[:3], concurrency=2),
                aio.segment_many(images[3:], concurrency=2),
            )
            return [*first, *second]

    results = asyncio.run(run())
    assert [r.mask.shape for r in results] == [(8, 9 + i) for i in range(6)]
    assert [int(r.mask[0, 0]) for r in results] == [255 if 40 * i > 127 else 0 for i in range(6)]
    assert 2 <= fake.most_in_flight <= 4
