"""SavedModel export on large images: peak memory by image size, and speed against Keras.

Each size runs in a fresh process: the exported default U-Net (16 filters, valid padding,
random weights) loads, warms up on a small image, then `serving_default` segments one
random uint8 image of that size. Extra memory: peak resident memory during the call minus
that before it, minus the input (uint8) and the outputs (float32 probabilities, uint8
mask). Speed: the same image through `Segmenter` on the same Keras model, in the same
process, interleaved (median of `--repeats`).

    .venv/bin/python bench/export_memory.py [--sizes 1024 2048 4096 8192] [--append]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def resident() -> tuple[int, int]:
    """(current, peak) resident memory of this process in bytes."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)


def worker(version: str, model_file: str, size: int, repeats: int) -> None:
    """Prints the extra peak memory of one call at `size`, and both timings, as JSON."""
    import numpy as np
    import tensorflow as tf
    from common import interleaved_timings

    from unet_keras.inference.segmenter import Segmenter

    serving = tf.saved_model.load(version).signatures["serving_default"]
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 1), dtype=np.uint8)
    serving(image=tf.constant(image[:, :600, :600]))  # warm-up: graphs, kernels
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM)
    before, _ = resident()
    outputs = serving(image=tf.constant(image))
    _, peak = resident()
    kept = image.nbytes + sum(output.numpy().nbytes for output in outputs.values())
    del outputs
    segmenter = Segmenter.from_path(model_file)
    segmenter.probabilities(image[0, :600, :600])
    times = interleaved_timings(
        {
            "export": lambda: serving(image=tf.constant(image)),
            "keras": lambda: segmenter.probabilities(image[0]),
        },
        repeats,
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({"size": size, "extra": peak - before - kept, **medians}))


def main() -> None:
    """Exports once, measures every size in its own process, publishes the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        version, model_file, size = args.worker
        worker(version, model_file, int(size), args.repeats)
        return
    from common import export_random_unet, publish

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        _, version = export_random_unet(Path(folder), 16)
        model_file = Path(folder) / "model.keras"
        for size in args.sizes:
            output = subprocess.run(
                [sys.executable, __file__, "--repeats", str(args.repeats),
                 "--worker", str(version), str(model_file), str(size)],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            result = json.loads(output.strip().splitlines()[-1])
            rows.append(
                f"| {size}^2 | {result['extra'] / 2**20:.0f} MiB "
                f"| {result['export']:.2f} s | {result['keras']:.2f} s "
                f"| {result['export'] / result['keras']:.3f}x |"
            )
    publish(
        "SavedModel export on large images",
        "Default network (16 filters, depth 4, valid padding, random weights), default "
        "tiles (700 in, 516 out), 4 tiles per network call. Extra memory: peak resident "
        "memory during one `serving_default` call minus that before it, minus the input "
        "and the outputs; a fresh process per size. Seconds: median of "
        f"{args.repeats}, the export against `Segmenter` on the same Keras model.",
        ["image", "extra peak memory", "export", "Keras (Segmenter)", "export / Keras"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()
