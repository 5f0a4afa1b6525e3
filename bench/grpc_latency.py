"""Serving over gRPC and REST: 512x512 latency against an in-process call, throughput,
client import time.

Latency: one 512x512 uint8 image through `SegmentationClient.segment` (one Predict of
`serving_default`, the mask only) to `unet-keras serve` in a subprocess on loopback, against
`serving_default` of the same SavedModel called in this process, interleaved; the target is
a p50 overhead of at most 10 %. REST, in the same interleaved loop: the image as PNG to
`segment_png` with `{"b64": ...}` through the REST port (what curl sends; the mask comes
back as base64 PNG) against `segment_png` called in this process (target: at most +10 %
at p50), and `SegmentationClient(transport="rest").segment` (mask only: the image as PNG
through `segment_png`). Throughput:
images/s with 1, 4 and 16 clients at once, each a `SegmentationClient` of its own (its own
channel) in a thread. Cold import: `python -c
"import unet_keras.client"` in a fresh process, median of 5, wall and CPU (user + system),
beside an interpreter that imports nothing. The model: the default training configuration
(16 filters, depth 4, valid padding) with random weights, exported by `export_model` with
its defaults.

    .venv/bin/python bench/grpc_latency.py [--calls 30] [--append]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "unet"
SIZE = 512
CONCURRENCY = (1, 4, 16)
IMPORT_RUNS = 5
CALL_SECONDS = 600.0


def latency(
    addresses: tuple[str, str], signatures: Any, image: np.ndarray, calls: int
) -> dict[str, list[float]]:
    """Seconds per call through gRPC, REST and in this process, interleaved, after a
    warm-up that also checks that they agree."""
    import tensorflow as tf
    from common import interleaved_timings

    from unet_keras import contract
    from unet_keras.client import SegmentationClient

    png = _png(image)

    def here() -> np.ndarray:
        return signatures[contract.SEGMENT](image=tf.constant(image[np.newaxis]))["mask"]

    def here_png() -> bytes:
        outputs = signatures[contract.SEGMENT_PNG](image_png=tf.constant([png]))
        return outputs[contract.MASK_PNG].numpy()[0]

    body = json.dumps(
        {
            "signature_name": contract.SEGMENT_PNG,
            "instances": [{"b64": base64.b64encode(png).decode()}],
        }
    ).encode()

    def rest_png() -> bytes:
        url = f"http://{addresses[1]}/v1/models/{MODEL}:predict"
        with urllib.request.urlopen(url, body, timeout=CALL_SECONDS) as reply:
            return base64.b64decode(json.loads(reply.read())["predictions"][0]["b64"])

    with (
        SegmentationClient(addresses[0], MODEL, timeout=CALL_SECONDS) as client,
        SegmentationClient(addresses[1], MODEL, timeout=CALL_SECONDS, transport="rest") as rest,
    ):
        served = client.segment(image).mask
        assert np.array_equal(served, here().numpy()[0]), "gRPC and in-process masks differ"
        assert np.array_equal(rest.segment(image).mask, served), "REST and gRPC masks differ"
        assert rest_png() == here_png(), "REST and in-process PNG masks differ"
        return interleaved_timings(
            {
                "grpc": lambda: client.segment(image),
                "in_process": here,
                "rest_png": rest_png,
                "in_process_png": here_png,
                "rest_client": lambda: rest.segment(image),
            },
            calls,
        )


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="PNG")
    return buffer.getvalue()


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
    from common import export_random_unet, percentile, publish, serving

    imports = {code: cold_start(code) for code in ("import unet_keras.client", "pass")}
    import tensorflow as tf

    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        _, version = export_random_unet(Path(folder))
        signatures = tf.saved_model.load(str(version)).signatures
        with serving(version.parent, Path(folder) / "server.log") as (address, rest):
            times = latency((address, rest), signatures, image, args.calls)
            rates = {}
            for clients in CONCURRENCY:
                per_client = math.ceil(args.calls / clients)
                rates[clients] = per_client, throughput(address, image, clients, per_client)

    ms = {name: [t * 1e3 for t in values] for name, values in times.items()}
    grpc_p50, here_p50 = percentile(ms["grpc"], 50), percentile(ms["in_process"], 50)
    overhead = grpc_p50 / here_p50 - 1
    png_p50, here_png_p50 = percentile(ms["rest_png"], 50), percentile(ms["in_process_png"], 50)
    png_overhead = png_p50 / here_png_p50 - 1
    rest_p50 = percentile(ms["rest_client"], 50)
    rows = [
        f"| 512x512 latency, gRPC (`SegmentationClient.segment`) | {grpc_p50:.0f} / "
        f"{percentile(ms['grpc'], 99):.0f} ms | p50 / p99, {args.calls} calls |",
        f"| 512x512 latency, in-process `serving_default` | {here_p50:.0f} / "
        f"{percentile(ms['in_process'], 99):.0f} ms | p50 / p99, interleaved with the above |",
        f"| gRPC overhead at p50 | {overhead:+.1%} ({grpc_p50 - here_p50:+.0f} ms) | target: "
        f"at most +10 %, {'met' if overhead <= 0.10 else 'missed'} |",
        f"| 512x512 latency, REST `segment_png` (base64 PNG, as curl) | {png_p50:.0f} / "
        f"{percentile(ms['rest_png'], 99):.0f} ms | p50 / p99, interleaved |",
        f"| 512x512 latency, in-process `segment_png` | {here_png_p50:.0f} / "
        f"{percentile(ms['in_process_png'], 99):.0f} ms | p50 / p99, interleaved |",
        f"| REST overhead at p50, PNG signature | {png_overhead:+.1%} "
        f"({png_p50 - here_png_p50:+.0f} ms) | target: at most +10 %, "
        f"{'met' if png_overhead <= 0.10 else 'missed'} |",
        f'| 512x512 latency, REST client (`transport="rest"`, mask only: PNG) | {rest_p50:.0f} / '
        f"{percentile(ms['rest_client'], 99):.0f} ms | p50 / p99, interleaved; "
        f"{rest_p50 / here_p50 - 1:+.0%} against in-process `serving_default` |",
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
        "Serving latency, gRPC and REST",
        "One 512x512 uint8 image through `SegmentationClient.segment` (one Predict, mask "
        "only) to `unet-keras serve` in a subprocess on loopback, against `serving_default` "
        "of the same SavedModel called in the benchmark's process; the same image as a PNG "
        "through the REST port to `segment_png` against `segment_png` in process; and the "
        "REST client; all interleaved. Default "
        "training configuration (16 filters, depth 4, valid padding), random weights, "
        "`export_model` defaults. Throughput: that many clients at once, each on its own "
        "channel, in threads of one process.",
        ["what", "figure", "note"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()
