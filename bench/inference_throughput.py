"""Overlap-tile prediction: throughput against single tiles, memory against image size, TTA.

- Throughput: megapixels/s of `Segmenter.probabilities` on a 4096x4096 image against the
  network alone on batches of the same tiles (output pixels/s), in one process.
- Memory: each image size in a fresh process; the peak resident memory during prediction
  (reset after warm-up) minus what was resident before it, minus the input and the output
  arrays themselves. It must not grow with the image.
- Test-time augmentation: its cost on a 512x512 section.

The network is the default training configuration (16 filters, depth 4, valid padding)
with random weights: speed does not depend on the weights.

    .venv/bin/python bench/inference_throughput.py [--append]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path


def segmenter(**options):
    """A Segmenter for the default configuration with random weights."""
    import keras

    from unet_keras.inference.segmenter import Segmenter
    from unet_keras.model import build_unet
    from unet_keras.record import MaskConfig, ModelConfig, ModelRecord, NormalizationConfig

    keras.utils.set_random_seed(0)
    config = ModelConfig(filters=16)
    normalization = NormalizationConfig("standardize", (128.0,), (50.0,))
    record = ModelRecord(MaskConfig((0, 255)), normalization, config, (316, 132))
    return Segmenter.from_model(build_unet(**config.to_dict()), record, **options)


def image(size: int):
    """A random uint8 image of size x size."""
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (size, size, 1), dtype=np.uint8)


def resident() -> tuple[int, int]:
    """(current, peak) resident memory of this process in bytes."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
    )
    return tuple(int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM"))


def memory_worker(size: int) -> None:
    """Prints the extra peak memory of predicting a size x size image, as JSON."""
    predictor = segmenter()
    predictor.probabilities(image(600))  # warm-up: graphs, oneDNN primitives
    picture = image(size)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM)
    before, _ = resident()
    started = time.perf_counter()
    result = predictor.probabilities(picture)
    seconds = time.perf_counter() - started
    _, peak = resident()
    arrays = picture.nbytes + result.nbytes
    print(json.dumps({"size": size, "extra": peak - before - arrays, "seconds": seconds}))


def tiled_throughput(repeats: int) -> tuple[dict, object]:
    """Mpx/s of the network on single tiles and of tiled 4096^2 prediction; and the plan."""
    import numpy as np

    from unet_keras.geometry import plan_tiles

    predictor = segmenter()
    big = image(4096)
    config = predictor.model_config
    axis = plan_tiles(4096, config.depth, config.padding, predictor.tile)
    tiles = (
        np.random.default_rng(1)
        .normal(size=(predictor.batch_size, axis.tile_in, axis.tile_in, 1))
        .astype(np.float32)
    )
    predictor._forward(tiles)  # warm-up
    tile_rates, tiled_rates = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(8):
            predictor._forward(tiles)
        tile_rates.append(8 * len(tiles) * axis.tile_out**2 / (time.perf_counter() - started))
        started = time.perf_counter()
        predictor.probabilities(big)
        tiled_rates.append(big.shape[0] * big.shape[1] / (time.perf_counter() - started))
    rates = {"tile": statistics.median(tile_rates), "tiled": statistics.median(tiled_rates)}
    return rates, axis


def section_seconds(repeats: int) -> dict[str, float]:
    """Median seconds for a 512^2 section, plain and with test-time augmentation."""
    from common import interleaved_timings

    section = image(512)
    predictors = {"plain": segmenter(), "tta": segmenter(tta=True)}
    for predictor in predictors.values():
        predictor.probabilities(section)  # warm-up
    calls = {name: partial(p.probabilities, section) for name, p in predictors.items()}
    times = interleaved_timings(calls, repeats)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def peak_memory() -> dict[int, dict]:
    """Extra peak memory and seconds at 4096^2 and 8192^2, each in a fresh process."""
    memory = {}
    for size in (4096, 8192):
        output = subprocess.run(
            [sys.executable, __file__, "--memory-worker", str(size)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        memory[size] = json.loads(output.strip().splitlines()[-1])
    return memory


def main() -> None:
    """Runs the measurements and publishes the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker)
        return
    from common import publish

    rates, axis = tiled_throughput(args.repeats)
    seconds = section_seconds(args.repeats)
    memory = peak_memory()
    mib = 2**20
    batch = segmenter().batch_size
    rows = [
        f"| network alone, batches of {batch} tiles of {axis.tile_in}^2 "
        f"| {rates['tile'] / 1e6:.3f} Mpx/s | |",
        f"| tiled 4096^2 ({len(axis.starts)}^2 tiles) | {rates['tiled'] / 1e6:.3f} Mpx/s "
        f"| {rates['tiled'] / rates['tile']:.1%} of the network alone |",
        f"| 512^2 section, plain | {seconds['plain']:.2f} s | |",
        f"| 512^2 section, TTA (8 symmetries) | {seconds['tta']:.2f} s "
        f"| {seconds['tta'] / seconds['plain']:.1f}x |",
        f"| extra peak memory, 4096^2 | {memory[4096]['extra'] / mib:.0f} MiB | "
        f"{memory[4096]['seconds']:.0f} s |",
        f"| extra peak memory, 8192^2 | {memory[8192]['extra'] / mib:.0f} MiB | "
        f"{memory[8192]['extra'] / memory[4096]['extra']:.2f}x the 4096^2 figure, "
        f"{memory[8192]['seconds']:.0f} s |",
    ]
    publish(
        "Overlap-tile prediction",
        f"Default network (16 filters, depth 4, valid padding), float32, default tiles "
        f"({axis.tile_in} in, {axis.tile_out} out), batch {batch}; medians of "
        f"{args.repeats}. Extra memory: peak resident memory during the prediction minus "
        "that before it, minus the input (uint8) and output (float32) arrays; each size in "
        "a fresh process.",
        ["what", "figure", "note"],
        rows,
        args.append,
    )


if __name__ == "__main__":
    main()
