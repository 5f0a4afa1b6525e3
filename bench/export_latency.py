"""SavedModel export: 512x512 latency against Keras, cold load time, size against weights.

Latency: `serving_default` of the exported version on one raw 512x512 uint8 image (the
graph normalises, mirrors and tiles) against Keras `predict_on_batch` on the same model
given the already normalised, mirror-padded 700x700 input that yields the same 512x512
output: what the graph adds is the preprocessing. Both in one process, interleaved.
Cold load: `tf.saved_model.load` of the version in a fresh process (TensorFlow already
imported), and its first call. Size: the version directory, and its variables alone,
against the model's weights.

    .venv/bin/python bench/export_latency.py [--calls 30] [--append]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {"default (16 filters)": 16, "paper (64 filters)": 64}


def cold_load_worker(version: str) -> None:
    """Prints the load time and first-call time of an exported version, as JSON."""
    import tensorflow as tf

    started = time.perf_counter()
    loaded = tf.saved_model.load(version)
    load = time.perf_counter() - started
    image = tf.zeros([1, 512, 512, 1], tf.uint8)
    started = time.perf_counter()
    loaded.signatures["serving_default"](image=image)
    print(json.dumps({"load": load, "first_call": time.perf_counter() - started}))


def measure(filters: int, calls: int, folder: Path) -> dict:
    """Exports one configuration and measures it."""
    import tensorflow as tf
    from common import export_random_unet, interleaved_timings

    from unet_keras.exports.savedmodel import variables_bytes
    from unet_keras.geometry import context_margin

    model, version = export_random_unet(folder, filters)
    weights = variables_bytes(model)
    total = sum(f.stat().st_size for f in version.rglob("*") if f.is_file())
    stored = sum(f.stat().st_size for f in (version / "variables").iterdir())

    image = np.random.default_rng(0).integers(0, 256, (1, 512, 512, 1), dtype=np.uint8)
    margin = context_margin(4)
    padded = np.pad(image[0], ((margin, 700 - 512 - margin),) * 2 + ((0, 0),), mode="reflect")
    normalised = ((padded.astype(np.float32) - 128.0) / 50.0)[None]
    serving = tf.saved_model.load(str(version)).signatures["serving_default"]
    served = serving(image=tf.constant(image))["probabilities"].numpy()
    direct = model.predict_on_batch(normalised)
    assert np.abs(served - direct[:, :512, :512]).max() < 1e-4, "outputs differ"
    latency = interleaved_timings(
        {
            "saved_model": lambda: serving(image=tf.constant(image)),
            "keras": lambda: model.predict_on_batch(normalised),
        },
        calls,
    )
    cold = json.loads(
        subprocess.run(
            [sys.executable, __file__, "--cold-load", str(version)],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
    )  # fmt: skip
    return {
        "weights": weights,
        "total": total,
        "stored": stored,
        "latency": latency,
        "cold": cold,
    }


def main() -> None:
    """Measures each configuration and publishes the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--cold-load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_load:
        cold_load_worker(args.cold_load)
        return
    from common import percentile, publish

    rows = []
    for name, filters in CONFIGS.items():
        calls = args.calls if filters <= 16 else max(5, args.calls // 5)
        with tempfile.TemporaryDirectory() as folder:
            result = measure(filters, calls, Path(folder))
        saved, keras_ = result["latency"]["saved_model"], result["latency"]["keras"]
        ratio = percentile(saved, 50) / percentile(keras_, 50)
        mib, cold = 2**20, result["cold"]
        rows.append(
            f"| {name} | {percentile(saved, 50) * 1e3:.0f} / {percentile(saved, 99) * 1e3:.0f} "
            f"| {percentile(keras_, 50) * 1e3:.0f} / {percentile(keras_, 99) * 1e3:.0f} "
            f"| {ratio:.3f}x | {cold['load']:.2f} s + {cold['first_call']:.2f} s "
            f"| {result['total'] / mib:.1f} MiB = {result['total'] / result['weights']:.3f}x "
            f"| {result['stored'] / result['weights']:.3f}x | {calls} |"
        )
    publish(
        "SavedModel export",
        "Latency of one 512x512 uint8 image: `serving_default` (normalising, mirroring and "
        "tiling in the graph) against Keras `predict_on_batch` on the prepared 700x700 input "
        "of the same model, interleaved, p50 / p99 in ms. Cold load: `tf.saved_model.load` "
        "in a fresh process + its first call. Size: the version directory and its variables "
        "against the weights (float32).",
        ["model", "SavedModel p50 / p99", "Keras p50 / p99", "p50 ratio", "cold load",
         "export size", "variables", "calls"],
        rows,
        args.append,
    )  # fmt: skip


if __name__ == "__main__":
    main()
