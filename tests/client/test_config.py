"""Channel and retry settings: checked, and what they set reaches the wire."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.client.fake_serving import FakeServing, fake_model
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


def test_gzip_compression_reaches_the_server(fake: FakeServing) -> None:
    with SegmentationClient(fake.address, channel=ChannelConfig(compression="gzip")) as packed:
        image = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
        np.testing.assert_array_equal(
            packed.segment(image).mask, fake_model(image[None, ..., None], 0, 1)["mask"][0]
        )


@pytest.mark.skipif(not Path("/usr/bin/openssl").exists(), reason="needs openssl")
def test_mutual_tls(tmp_path: Path) -> None:
    pem = _certificates(tmp_path)
    server_credentials = grpc.ssl_server_credentials(
        [(pem["server.key"], pem["server.pem"])],
        root_certificates=pem["ca.pem"],
        require_client_auth=True,
    )
    server = FakeServing().start(server_credentials)
    try:
        channel = ChannelConfig(
            tls=True,
            root_certificates=pem["ca.pem"],
            private_key=pem["client.key"],
            certificate_chain=pem["client.pem"],
        )
        with SegmentationClient(server.address, channel=channel, timeout=5) as secure:
            assert secure.model_status()[0]["state"] == "AVAILABLE"
        anonymous = ChannelConfig(tls=True, root_certificates=pem["ca.pem"])
        once = RetryPolicy(attempts=1)
        with (
            SegmentationClient(server.address, channel=anonymous, retry=once, timeout=5) as bare,
            pytest.raises(UnavailableError),
        ):
            bare.model_status()
    finally:
        server.stop()


def _certificates(folder: Path) -> dict[str, bytes]:
    """A test CA, and server (for localhost) and client certificates it signed."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=test-ca")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={'localhost' if name == 'server' else 'client'}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
                "-extfile", "san.ext")  # fmt: skip
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".pem", ".key")}
