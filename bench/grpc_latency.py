"""gRPC serving: 512x512 latency against an in-process call, throughput, client import time.

Latency: one 512x512 uint8 image through `SegmentationClient.segment` (one Predict of
`serving_default`, the mask only) to `unet-keras serve` in a subprocess on loopback, against
`serving_default` of the same SavedModel called in this process, interleaved; the target is
a p50 overhead of at most 10 %. Throughput: images/s with 1, 4 and 16 clients at once, each
a `SegmentationClient` of its own (its own channel) in a thread. Cold import: `python -c
"import unet_keras.client"` in a fresh process, median of 5, wall and CPU (user + system),
beside an interpreter that imports nothing. The model: the default training configuration
(16 filters, depth 4, valid padding) with random weights, exported by `export_model` with
its defaults.

    .venv/bin/python bench/grpc_latency.py [--calls 30] [--append]
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MODEL = "unet"
SIZE = 512
CONCURRENCY = (1, 4, 16)
IMPORT_RUNS = 5
START_SECONDS = 300.0
CALL_SECONDS = 600.0


@contextmanager
def serving(base: Path, log: Path) -> Iterator[str]:
    """`unet-keras serve` of `base` on a free loopback port; its address once it serves."""
    from unet_keras.client import DeadlineExceededError, SegmentationClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    command = [sys.executable, "-m", "unet_keras.cli", "serve", "--model-base-path", str(base),
               "--model-name", MODEL, "--port", address.rsplit(":", 1)[1],
               "--rest-api-port", "0"]  # fmt: skip
    with open(log, "wb") as stderr:
        server = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        with SegmentationClient(address, MODEL) as client:
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"the server exited:\n{log.read_text()}")
                try:
                    client.wait_until_available(timeout=1.0)
                    break
                except DeadlineExceededError:
                    if time.monotonic() > deadline:
                        raise
        yield address
    finally:
        server.terminate()
        server.wait(timeout=60)


def latency(
    address: str, function: Callable[..., dict], image: np.ndarray, calls: int
) -> dict[str, list[float]]:
    """Seconds per call through gRPC and in this process, interleaved, after a warm-up."""
    import tensorflow as tf
    from common import interleaved_timings

    from unet_keras.client import SegmentationClient

    def here() -> np.ndarray:
        return function(image=tf.constant(image[np.newaxis]))["mask"].numpy()[0]

    with SegmentationClient(address, MODEL, timeout=CALL_SECONDS) as client:
        served = client.segment(image).mask
        assert np.array_equal(served, here()), "gRPC and in-process masks differ"
        return interleaved_timings(
            {"grpc": lambda: client.segment(image), "in_process": here}, calls
        )


def throughput(address: str, image: np.ndarray, clients: int, per_client: int) -> float:
    """Images/s with `clients` clients at once, each sending `per_client` images."""
    from unet_keras.client import SegmentationClient

    connected = [SegmentationClient(address, MODEL, timeout=CALL_SECONDS) for _ in range(clients)]
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda c: [c.segment(image) for _ in range(per_client)], connected))
        return clients * per_client / (time.perf_counter() - started)
    finally:
        for client in connected:
            client.close()


def fresh_process(code: str) -> tuple[float, float]:
    """(wall, CPU) seconds of `python -c code` in a fresh process."""
    started = time.perf_counter()
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", code], os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"python -c {code!r} failed")
    return wall, usage.ru_utime + usage.ru_stime


def cold_start(code: str) -> tuple[float, float]:
    """Median wall and CPU seconds of `python -c code` over IMPORT_RUNS fresh processes."""
    runs = [fresh_process(code) for _ in range(IMPORT_RUNS)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def main() -> None:
    """Measures and publishes the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=30, help="latency calls, and images "
                        "per throughput level (split between its clients)")  # fmt: skip
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    from common import export_random_unet, percentile, publish

    imports = {code: cold_start(code) for code in ("import unet_keras.client", "pass")}
    import tensorflow as tf

    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        _, version = export_random_unet(Path(folder))
        function = tf.saved_model.load(str(version)).signatures["serving_default"]
        with serving(version.parent, Path(folder) / "server.log") as address:
            times = latency(address, function, image, args.calls)
            rates = {}
            for clients in CONCURRENCY:
                per_client = math.ceil(args.calls / clients)
                rates[clients] = per_client, throughput(address, image, clients, per_client)

    ms = {name: [t * 1e3 for t in values] for name, values in times.items()}
    grpc_p50, here_p50 = percentile(ms["grpc"], 50), percentile(ms["in_process"], 50)
    overhead = grpc_p50 / here_p50 - 1
    rows = [
        f"| 512x512 latency, gRPC (`SegmentationClient.segment`) | {grpc_p50:.0f} / "
        f"{percentile(ms['grpc'], 99):.0f} ms | p50 / p99, {args.calls} calls |",
        f"| 512x512 latency, in-process `serving_default` | {here_p50:.0f} / "
        f"{percentile(ms['in_process'], 99):.0f} ms | p50 / p99, interleaved with the above |",
        f"| gRPC overhead at p50 | {overhead:+.1%} ({grpc_p50 - here_p50:+.0f} ms) | target: "
        f"at most +10 %, {'met' if overhead <= 0.10 else 'missed'} |",
        *(
            f"| throughput, {clients} client{'s' * (clients > 1)} | {rate:.2f} images/s | "
            f"{clients * per_client} images |"
            for clients, (per_client, rate) in rates.items()
        ),
        f"| cold `import unet_keras.client` | {imports['import unet_keras.client'][0]:.2f} s "
        f"wall, {imports['import unet_keras.client'][1]:.2f} s CPU | fresh process, median of "
        f"{IMPORT_RUNS}; `python -c pass`: {imports['pass'][0]:.2f} s, {imports['pass'][1]:.2f}"
        " s CPU |",
    ]
    publish(
        "gRPC serving latency",
        "One 512x512 uint8 image through `SegmentationClient.segment` (one Predict, mask "
        "only) to `unet-keras serve` in a subprocess on loopback, against `serving_default` "
        "of the same SavedModel called in the benchmark's process, interleaved. Default "
        "training configuration (16 filters, depth 4, valid padding), random weights, "
        "`export_model` defaults. Throughput: that many clients at once, each on its own "
        "channel, in threads of one process.",
        ["what", "figure", "note"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()
