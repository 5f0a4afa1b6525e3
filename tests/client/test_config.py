"""Channel and retry settings: checked, and what they set reaches the wire."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.client.fake_serving import FakeServing, fake_model
from tests.serving_fixtures import HALF_PLUS_TWO, ServerProcess, certificates, export_half_plus_two
from unet_keras.client import ChannelConfig, RetryPolicy, SegmentationClient, UnavailableError


def test_backoff_is_full_jitter_under_the_exponential_cap() -> None:
    policy = RetryPolicy(attempts=10, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    random.seed(3)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert 0 <= min(delays) < cap / 4 and 3 * cap / 4 < max(delays) <= cap


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="compression"):
        ChannelConfig(compression="brotli")
    with pytest.raises(ValueError, match="both private_key and certificate_chain"):
        ChannelConfig(tls=True, private_key=b"key")
    with pytest.raises(ValueError, match="need tls=True"):
        ChannelConfig(root_certificates=b"pem")
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    options = dict(ChannelConfig(keepalive_time=300, max_send_bytes=1 << 20).options())
    assert options["grpc.keepalive_time_ms"] == 300_000
    assert options["grpc.max_send_message_length"] == 1 << 20
    assert '"round_robin"' in options["grpc.service_config"]


class CountingProxy:
    """A TCP relay that counts the bytes a client sends through it to the server."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.sent = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if counted:
                    self.sent += len(data)
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_compression_reaches_the_wire(fake: FakeServing, connect: Any, compression: str) -> None:
    proxy = CountingProxy(fake.address)
    image = np.zeros((1000, 1000), np.uint8)  # 1 MB that compresses to almost nothing
    channel = ChannelConfig(compression=compression)
    with connect(proxy.address, channel=channel, timeout=10) as client:
        np.testing.assert_array_equal(
            client.segment(image).mask, fake_model(image[None, ..., None], 0, 1)["mask"][0]
        )
    if compression is None:
        assert proxy.sent > 1_000_000
    else:
        assert proxy.sent < 100_000, proxy.sent


def test_the_backoff_is_slept(
    fake: FakeServing, connect: Any, monkeypatch, slept: list[float]
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the cap every time
    retry = RetryPolicy(attempts=4, initial_backoff=0.2, max_backoff=1.0, multiplier=2.0)
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, "down", times=3)
    with connect(fake.address, retry=retry, timeout=10) as client:
        started = time.monotonic()
        client.model_status()
        elapsed = time.monotonic() - started
    assert len(fake.calls("GetModelStatus")) == 4
    assert slept == [0.2, 0.4, 0.8]  # doubling from the first backoff, each one slept
    assert elapsed >= sum(slept)


def test_mutual_tls_with_the_local_server(tmp_path: Path) -> None:
    """`unet-keras serve --tls-client-ca` admits clients with a certificate its CA signed."""
    pem = certificates(tmp_path)
    export_half_plus_two(tmp_path / HALF_PLUS_TWO, 1)
    flags = ["--tls-cert", pem["server.pem"], "--tls-key", pem["server.key"]]
    flags += ["--tls-client-ca", pem["ca.pem"]]
    server = ServerProcess(
        tmp_path / HALF_PLUS_TWO, HALF_PLUS_TWO, tmp_path / "log", *map(str, flags)
    )
    target = server.address.replace("127.0.0.1", "localhost")
    try:
        channel = ChannelConfig(
            tls=True,
            root_certificates=pem["ca.pem"].read_bytes(),
            private_key=pem["client.key"].read_bytes(),
            certificate_chain=pem["client.pem"].read_bytes(),
        )
        with SegmentationClient(target, HALF_PLUS_TWO, channel=channel, timeout=10) as secure:
            assert secure.wait_until_available(timeout=60) == 1
        anonymous = ChannelConfig(tls=True, root_certificates=pem["ca.pem"].read_bytes())
        once = RetryPolicy(attempts=1)
        with (
            SegmentationClient(target, HALF_PLUS_TWO, channel=anonymous, retry=once) as bare,
            pytest.raises(UnavailableError),
        ):
            bare.model_status(timeout=5)
    finally:
        server.terminate()
        server.wait()
