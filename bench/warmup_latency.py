"""Warmup: the first request after a version loads, with and without the export's warmup
requests, against the steady-state latency.

For each round and each export (the same random default-configuration U-Net exported with
warmup requests and with `--no-warmup`), a fresh `unet-keras serve` process loads it; then
one 512x512 uint8 image is sent through the gRPC client to `serving_default` (mask only)
and, as PNG, to `segment_png`: the first call of each, then `--calls` more of each
(steady state, p50). Rounds alternate the two exports. Target: with warmup, the first
request at most 1.5x the steady p50.

    .venv/bin/python bench/warmup_latency.py [--rounds 3] [--calls 10] [--append]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 512
TARGET = 1.5


def one_round(base: Path, log: Path, image: np.ndarray, png: bytes, calls: int) -> dict:
    """Seconds to AVAILABLE, and the first and steady-state call times of each signature."""
    from common import percentile, serving

    from unet_keras import contract
    from unet_keras.client import SegmentationClient

    started = time.perf_counter()
    with serving(base, log) as (address, _):
        ready = time.perf_counter() - started
        with SegmentationClient(address, "unet", timeout=600) as client:
            calls_of = {
                "serving_default": lambda: client.segment(image),
                "segment_png": lambda: client.predict(
                    {contract.IMAGE_PNG: np.array([png], object)},
                    signature=contract.SEGMENT_PNG,
                ),
            }
            result = {"ready": ready}
            for name, call in calls_of.items():
                began = time.perf_counter()
                call()
                first = time.perf_counter() - began
                steady = []
                for _ in range(calls):
                    began = time.perf_counter()
                    call()
                    steady.append(time.perf_counter() - began)
                result[name] = (first, percentile(steady, 50))
    return result


def main() -> None:
    """Measures and publishes the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="server starts per export")
    parser.add_argument("--calls", type=int, default=10, help="steady-state calls per signature")
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    from common import export_random_unet, publish
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="PNG")
    results: dict[str, list[dict]] = {"warmup": [], "no warmup": []}
    with tempfile.TemporaryDirectory() as folder:
        bases = {}
        for mode, warmup in (("warmup", True), ("no warmup", False)):
            (Path(folder) / mode).mkdir()
            bases[mode] = export_random_unet(Path(folder) / mode, warmup=warmup)[1].parent
        for _ in range(args.rounds):
            for mode, base in bases.items():
                log = Path(folder) / f"{mode}.log"
                results[mode].append(one_round(base, log, image, buffer.getvalue(), args.calls))

    rows = []
    for mode, rounds in results.items():
        ready = statistics.median(r["ready"] for r in rounds)
        for signature in ("serving_default", "segment_png"):
            firsts = [r[signature][0] * 1e3 for r in rounds]
            steadies = [r[signature][1] * 1e3 for r in rounds]
            ratio = statistics.median(f / s for f, s in zip(firsts, steadies, strict=True))
            verdict = ("met" if ratio <= TARGET else "missed") if mode == "warmup" else "-"
            rows.append(
                f"| {mode} | `{signature}` | {statistics.median(firsts):.0f} ms | "
                f"{statistics.median(steadies):.0f} ms | {ratio:.2f}x | {verdict} | "
                f"{ready:.1f} s |"
            )
    publish(
        "Serving warmup: first request after a version loads",
        f"A default-configuration U-Net (16 filters, depth 4, valid padding, random weights) "
        f"exported with and without warmup requests; {args.rounds} fresh `unet-keras serve` "
        f"processes each, alternating; one 512x512 uint8 image through the gRPC client, the "
        f"first call and then {args.calls} more (steady p50) per signature. Medians over "
        f"rounds; ratio: first / steady p50 (target with warmup: at most {TARGET}x). "
        "Load: process start to AVAILABLE (TensorFlow import, load, warmup).",
        ["export", "signature", "first call", "steady p50", "ratio", "target", "load"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()
